//! The README's headline — the share of fields the edge sends and the bytes
//! per reading on the recorded Twizy trips — checked against the codec
//! report of today's edge on those trips. The figures are read from the
//! README itself, so the claim and the test cannot drift apart: a codec
//! change that makes the shared trips worse than the README says fails here.

use std::path::Path;

use crate::harness::{binary, testdata};

/// The headline's figures: percent of fields sent, bytes per reading, bytes
/// of a full protobuf reading.
fn readme_headline() -> (f64, f64, f64) {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .expect("README.md");
    let text = readme.split_whitespace().collect::<Vec<_>>().join(" ");
    let number_before = |marker: &str| -> f64 {
        let head = &text[..text.find(marker).unwrap_or_else(|| {
            panic!("the README's headline no longer says \"… {marker}\"; update this test with it")
        })];
        head.rsplit(' ')
            .find(|w| !w.is_empty())
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("no number before \"{marker}\" in the README"))
    };
    (
        number_before("% of the fields"),
        number_before("bytes per reading (a full protobuf"),
        number_before("bytes), every reconstructed value within its tolerance"),
    )
}

#[test]
fn the_readme_headline_holds_on_the_recorded_twizy_trips() {
    let (percent_sent, bytes, protobuf) = readme_headline();
    let mut trips: Vec<_> = std::fs::read_dir(testdata("twizy-ev"))
        .expect("testdata/twizy-ev")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "csv"))
        .collect();
    trips.sort();
    assert!(
        trips.len() >= 7,
        "the shared trips are in testdata/twizy-ev"
    );
    let out = std::process::Command::new(binary("lockstep-edge"))
        .args(["report", "--format", "twizy", "--json"])
        .args(&trips)
        .output()
        .expect("lockstep-edge report runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let o = &report["overall"];
    println!("{o:#}");
    assert_eq!(o["files"], trips.len());
    assert_eq!(
        o["all_within_tolerance"], true,
        "every reconstructed value within its tolerance"
    );
    let sent = 100.0 * o["transmitted"].as_f64().unwrap() / o["fields"].as_f64().unwrap();
    // The README rounds to whole numbers: "7 %" holds up to 7.5 %.
    assert!(
        sent < percent_sent + 0.5,
        "the edge sends {sent:.2} % of the fields; the README says {percent_sent} %"
    );
    let per_reading = o["bytes_per_reading"].as_f64().unwrap();
    assert!(
        per_reading < bytes + 0.5,
        "{per_reading:.2} bytes per reading; the README says {bytes}"
    );
    let raw = o["raw_protobuf_bytes_per_reading"].as_f64().unwrap();
    assert!(
        (raw - protobuf).abs() < 0.5,
        "a full protobuf reading is {raw:.2} bytes; the README says {protobuf}"
    );
}
