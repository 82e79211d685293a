//! Integer arithmetic that every platform computes bit-identically:
//! rounding division, sine and cosine in Q30, and metre/degree conversions.
//! No floating point and no platform libm (docs/protocol.md, "Arithmetic").

/// 1.0 in Q30.
pub const ONE_Q30: i64 = 1 << 30;
/// π/18000 (radians per centidegree) in Q40, floor(π/18000 · 2^40).
const RAD_PER_CDEG_Q40: i64 = 191_900_980;
/// Millimetres per 1e-7 degree of latitude, times 1000 (111.32 km per degree).
pub const MM_PER_Q_X1000: i64 = 11_132;

/// `n / d` rounded half away from zero; `d > 0`.
pub fn div_round(n: i128, d: i128) -> i128 {
    debug_assert!(d > 0);
    if n >= 0 {
        (n + d / 2) / d
    } else {
        -((-n + d / 2) / d)
    }
}

/// Sine of an angle in centidegrees (any integer), in Q30.
pub fn sin_cdeg(a: i64) -> i64 {
    let a = a.rem_euclid(36_000);
    let (x, negative) = match a {
        0..=9_000 => (a, false),
        9_001..=18_000 => (18_000 - a, false),
        18_001..=27_000 => (a - 18_000, true),
        _ => (36_000 - a, true),
    };
    let s = sin_first_quadrant(x);
    if negative { -s } else { s }
}

/// Cosine of an angle in centidegrees, in Q30.
pub fn cos_cdeg(a: i64) -> i64 {
    sin_cdeg(a + 9_000)
}

/// Taylor series to x^13 for x in [0, 9000] centidegrees; all intermediate
/// values are non-negative, so truncation is the same everywhere.
fn sin_first_quadrant(x_cdeg: i64) -> i64 {
    // x in radians, Q30: x_cdeg · π/18000.
    let x = (x_cdeg * RAD_PER_CDEG_Q40) >> 10;
    let x2 = (x * x) >> 30;
    let mut term = x;
    let mut sum = x;
    for (k, d) in [(1, 6), (2, 20), (3, 42), (4, 72), (5, 110), (6, 156)] {
        term = ((term * x2) >> 30) / d;
        if k % 2 == 1 { sum -= term } else { sum += term }
    }
    sum.min(ONE_Q30)
}

/// Cosine of a latitude given in 1e-7 degrees (rounded to centidegrees), Q30,
/// never below 1/1024 so longitudes near the poles stay finite.
pub fn cos_lat_q30(lat_q: i64) -> i64 {
    let cdeg = div_round(i128::from(lat_q), 100_000) as i64;
    cos_cdeg(cdeg).max(ONE_Q30 >> 10)
}

/// Millimetres north of a latitude difference in 1e-7 degrees.
pub fn lat_q_to_mm(dlat_q: i64) -> i128 {
    div_round(i128::from(dlat_q) * i128::from(MM_PER_Q_X1000), 1000)
}

/// Millimetres east of a longitude difference in 1e-7 degrees at `cos_lat`.
pub fn lon_q_to_mm(dlon_q: i64, cos_lat: i64) -> i128 {
    div_round(
        i128::from(dlon_q) * i128::from(MM_PER_Q_X1000) * i128::from(cos_lat),
        1000 * i128::from(ONE_Q30),
    )
}

/// Latitude difference in 1e-7 degrees of `north_mm` millimetres.
pub fn mm_to_lat_q(north_mm: i64) -> i64 {
    clamp_offset(div_round(
        i128::from(north_mm) * 1000,
        i128::from(MM_PER_Q_X1000),
    ))
}

/// Longitude difference in 1e-7 degrees of `east_mm` millimetres at `cos_lat`.
pub fn mm_to_lon_q(east_mm: i64, cos_lat: i64) -> i64 {
    clamp_offset(div_round(
        i128::from(east_mm) * 1000 * i128::from(ONE_Q30),
        i128::from(MM_PER_Q_X1000) * i128::from(cos_lat),
    ))
}

/// Offsets in 1e-7 degrees are clamped to ±2^40, far beyond any real
/// position, so adding one to a position cannot overflow.
fn clamp_offset(v: i128) -> i64 {
    v.clamp(-(1 << 40), 1 << 40) as i64
}

/// Squared 2-D distance in mm² between two positions in 1e-7 degrees,
/// measured at the latitude of `a`.
pub fn dist2_mm(a: (i64, i64), b: (i64, i64)) -> i128 {
    let cos = cos_lat_q30(a.0);
    let dy = lat_q_to_mm(b.0 - a.0);
    let dx = lon_q_to_mm(b.1 - a.1, cos);
    dx * dx + dy * dy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sine_is_accurate_everywhere() {
        for a in (-36_000..72_000).step_by(7) {
            let exact = (a as f64 / 100.0).to_radians().sin();
            let got = sin_cdeg(a) as f64 / ONE_Q30 as f64;
            assert!(
                (exact - got).abs() < 2e-8,
                "sin({a} cdeg): {got} vs {exact}"
            );
        }
        assert_eq!(sin_cdeg(0), 0);
        assert_eq!(cos_cdeg(0), ONE_Q30);
    }

    #[test]
    fn conversions_round_trip() {
        let cos = cos_lat_q30(340_078_320);
        for mm in [-123_456i64, -1, 0, 1, 5_000, 987_654] {
            let back = lon_q_to_mm(mm_to_lon_q(mm, cos), cos) as i64;
            assert!((back - mm).abs() <= 10, "{mm} -> {back}");
            let back = lat_q_to_mm(mm_to_lat_q(mm)) as i64;
            assert!((back - mm).abs() <= 6, "{mm} -> {back}");
        }
        assert_eq!(div_round(-5, 2), -3);
        assert_eq!(div_round(5, 2), 3);
    }
}
