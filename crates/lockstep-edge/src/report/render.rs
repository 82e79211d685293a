//! Turns the run's counters into the [`Report`] (per-signal and overall
//! figures) and the report into the human-readable table.

use std::collections::BTreeMap;

use super::{Analysis, Report, SignalReport};

/// The figures of a finished run.
pub(super) fn summarise(run: Analysis) -> Report {
    let Analysis {
        catalog,
        acc,
        mut ov,
        bytes,
        repairs,
        files,
        problems,
    } = run;
    let sigs = catalog.signals();
    let pos = catalog.position();
    let pos_tol_m = pos.map(|p| sigs[p.lat].tolerance()).unwrap_or(0.0);
    let is_pos = |c: usize| pos.is_some_and(|p| c == p.lat || c == p.lon);
    let frac = |skipped: u64, total: u64| {
        if total == 0 {
            0.0
        } else {
            skipped as f64 / total as f64
        }
    };
    let mut signals = BTreeMap::new();
    let mut all_ok = true;
    let (mut seed_sent, mut hold_sent, mut hold_forced_sent) = (0u64, 0u64, 0u64);
    for (c, sig) in sigs.iter().enumerate() {
        let a = &acc[c];
        let (max_error, tolerance, ok) = if is_pos(c) {
            (a.max_err_m, pos_tol_m, a.max_err_m <= pos_tol_m)
        } else {
            (
                a.max_err_q as f64 * sig.quantum(),
                sig.tolerance(),
                a.max_err_q <= sig.tolerance_q,
            )
        };
        let ok = ok && a.null_mismatches == 0;
        all_ok &= ok;
        ov.fields += a.fields;
        ov.transmitted += a.sent;
        seed_sent += a.seed_sent;
        hold_sent += a.hold_sent;
        hold_forced_sent += a.hold_forced_sent;
        signals.insert(
            sig.name.clone(),
            SignalReport {
                unit: if is_pos(c) {
                    format!("{} (error: m)", sig.unit)
                } else {
                    sig.unit.clone()
                },
                model: sig.model.name().into(),
                fields: a.fields,
                transmitted: a.sent,
                skipped_fraction: frac(a.fields - a.sent.min(a.fields), a.fields),
                max_error,
                tolerance,
                within_tolerance: ok,
                max_error_vs_raw: a.max_err_raw,
                null_mismatches: a.null_mismatches,
                seed_skipped_fraction: frac(a.fields - a.seed_sent.min(a.fields), a.fields),
                hold_skipped_fraction: frac(a.fields - a.hold_sent.min(a.fields), a.fields),
                hold_forced_skipped_fraction: frac(
                    a.fields - a.hold_forced_sent.min(a.fields),
                    a.fields,
                ),
            },
        );
    }
    let readings = ov.readings;
    let per = |b: u64| {
        if readings == 0 {
            0.0
        } else {
            b as f64 / readings as f64
        }
    };
    ov.skipped_fraction = frac(ov.fields - ov.transmitted, ov.fields);
    ov.seed_skipped_fraction = frac(ov.fields - seed_sent, ov.fields);
    ov.hold_skipped_fraction = frac(ov.fields - hold_sent, ov.fields);
    ov.hold_forced_skipped_fraction = frac(ov.fields - hold_forced_sent, ov.fields);
    ov.bytes_per_reading = per(bytes.lockstep);
    ov.raw_protobuf_bytes_per_reading = per(bytes.raw_protobuf);
    ov.bytes_fraction_of_raw_protobuf = if bytes.raw_protobuf == 0 {
        0.0
    } else {
        bytes.lockstep as f64 / bytes.raw_protobuf as f64
    };
    ov.seed_wire_bytes_per_reading = per(bytes.seed_wire);
    ov.gzip_json_bytes_per_reading = per(bytes.gzip_json);
    ov.all_within_tolerance = all_ok;
    Report {
        signals,
        signal_order: sigs.iter().map(|s| s.name.clone()).collect(),
        overall: ov,
        repairs,
        files,
        problems,
    }
}

fn pct(f: f64) -> String {
    format!("{:.1} %", f * 100.0)
}

/// The human-readable report.
pub fn render_text(r: &Report) -> String {
    let mut s = String::new();
    let o = &r.overall;
    s += &format!(
        "Lockstep codec report: {} file(s), {} readings, batches of {} readings ({} batches, {} keyframes)\n",
        o.files, o.readings, o.batch_readings, o.batches, o.keyframes
    );
    s += &format!("Input repairs: {}\n\n", r.repairs);
    s += "                         ---------- fields skipped ----------\n";
    s += &format!(
        "{:<10} {:>7} {:>9} {:>8} {:>8} {:>8}  {:>12} {:>12}  {:<4} {}\n",
        "signal",
        "fields",
        "lockstep",
        "hold",
        "hold+kf",
        "seed",
        "max error",
        "tolerance",
        "ok",
        "model"
    );
    for name in &r.signal_order {
        let x = &r.signals[name];
        let unit = if x.unit.contains("(error: m)") {
            "m".to_string()
        } else {
            x.unit.clone()
        };
        if x.fields == 0 {
            s += &format!("{name:<10} {:>7}  (no data)\n", 0);
            continue;
        }
        let flag = if x.skipped_fraction + 1e-12 < x.hold_skipped_fraction {
            "  < hold"
        } else {
            ""
        };
        s += &format!(
            "{name:<10} {:>7} {:>9} {:>8} {:>8} {:>8}  {:>12} {:>12}  {:<4} {}{flag}\n",
            x.fields,
            pct(x.skipped_fraction),
            pct(x.hold_skipped_fraction),
            pct(x.hold_forced_skipped_fraction),
            pct(x.seed_skipped_fraction),
            format!("{:.4} {unit}", x.max_error),
            format!("{:.4} {unit}", x.tolerance),
            if x.within_tolerance { "yes" } else { "NO" },
            x.model,
        );
    }
    s += &format!(
        "{:<10} {:>7} {:>9} {:>8} {:>8} {:>8}\n\n",
        "overall",
        o.fields,
        pct(o.skipped_fraction),
        pct(o.hold_skipped_fraction),
        pct(o.hold_forced_skipped_fraction),
        pct(o.seed_skipped_fraction)
    );
    if r.files.len() > 1 {
        s += "Per file (all signals): lockstep skipped / hold skipped / lockstep bytes per reading\n";
        for f in &r.files {
            s += &format!(
                "  {:<28} {:>6} readings  {:>7} {:>7}  {:>6.2}\n",
                f.name,
                f.readings,
                pct(f.skipped_fraction),
                pct(f.hold_skipped_fraction),
                f.bytes_per_reading
            );
        }
        s += "\n";
    }
    s += "Bytes per reading:\n";
    s += &format!(
        "  lockstep batches      {:>7.2}  ({} of raw protobuf)\n",
        o.bytes_per_reading,
        pct(o.bytes_fraction_of_raw_protobuf)
    );
    s += &format!(
        "  raw full protobuf     {:>7.2}\n",
        o.raw_protobuf_bytes_per_reading
    );
    s += &format!(
        "  seed wire (4 fields)  {:>7.2}\n",
        o.seed_wire_bytes_per_reading
    );
    s += &format!(
        "  gzip'd JSON batches   {:>7.2}\n",
        o.gzip_json_bytes_per_reading
    );
    s += &format!(
        "\nEvery field within tolerance: {}.\n",
        if o.all_within_tolerance { "yes" } else { "NO" }
    );
    for p in &r.problems {
        s += &format!("  problem: {p}\n");
    }
    s += "Skipped = non-null fields not transmitted. hold = send-on-delta (hold the last sent value);\n\
          hold+kf = the same plus the codec's keyframes and max-silence sends; seed = the original\n\
          EWMA (alpha 0.3, per channel). Max error = |decoded - recorded value quantised|, positions in 2-D metres.\n";
    s
}
