//! Kubernetes resource quantities (`100m`, `2`, `1.5Gi`, `1e3`, `500M`): one parser for the
//! scheduler, the controllers, the node agent and the eviction thresholds.
use serde_json::Value;

/// A quantity in thousandths of its unit ("100m" -> 100, "2" -> 2000, "1Ki" -> 1024000),
/// rounded up as Kubernetes does, in exact decimal arithmetic; None if it is not a quantity or
/// does not fit.
pub fn milli_of(s: &str) -> Option<i128> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+')).unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let exp10: i32 = match suffix {
        "" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" => 0,
        "m" => -3,
        "k" => 3,
        "M" => 6,
        "G" => 9,
        "T" => 12,
        "P" => 15,
        "E" => 18,
        s if s.starts_with('e') || s.starts_with('E') => s[1..].parse().ok()?,
        _ => return None,
    };
    let bin: i128 = match suffix {
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        _ => 1,
    };
    let (negative, digits, frac_len) = decimal(num)?;
    let v = digits.checked_mul(bin)?;
    let scale = exp10.checked_add(3)?.checked_sub(frac_len)?;
    let magnitude_up = |p: Option<i128>| match p {
        Some(p) if negative => v / p,
        Some(p) => v / p + i128::from(v % p != 0),
        // 10^-scale does not fit: the value is a sliver above zero (or below it).
        None => i128::from(v != 0 && !negative),
    };
    let m = if scale >= 0 {
        v.checked_mul(10i128.checked_pow(u32::try_from(scale).ok()?)?)?
    } else {
        magnitude_up(u32::try_from(-i64::from(scale)).ok().and_then(|e| 10i128.checked_pow(e)))
    };
    Some(if negative { -m } else { m })
}

/// `[+-]digits[.digits]` as (negative, all significant digits, digits after the point).
fn decimal(num: &str) -> Option<(bool, i128, i32)> {
    let (negative, body) = match num.as_bytes().first() {
        Some(b'-') => (true, &num[1..]),
        Some(b'+') => (false, &num[1..]),
        _ => (false, num),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if (int.is_empty() && frac.is_empty()) || !int.bytes().chain(frac.bytes()).all(|c| c.is_ascii_digit()) {
        return None;
    }
    let frac = frac.trim_end_matches('0');
    let all = format!("{int}{frac}");
    let all = all.trim_start_matches('0');
    let digits = if all.is_empty() { 0 } else { all.parse::<i128>().ok()? };
    Some((negative, digits, i32::try_from(frac.len()).ok()?))
}

/// [`milli_of`] a JSON quantity (a string, or a plain number).
pub fn milli(v: &Value) -> Option<i128> {
    match v {
        Value::String(s) => milli_of(s),
        Value::Number(n) => milli_of(&n.to_string()),
        _ => None,
    }
}

/// A non-negative quantity of bytes (or of any unit: a count), rounded down; None if it is not
/// a quantity or is negative.
pub fn bytes(q: &str) -> Option<u64> {
    let m = milli_of(q)?;
    (m >= 0).then(|| u64::try_from(m / 1000).unwrap_or(u64::MAX))
}

/// A non-negative quantity in thousandths (CPU: millicores); None if not a quantity or negative.
pub fn millis(q: &str) -> Option<u64> {
    let m = milli_of(q)?;
    (m >= 0).then(|| u64::try_from(m).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn the_forms_kubernetes_writes() {
        assert_eq!(milli(&json!("100m")), Some(100));
        assert_eq!(milli(&json!("2")), Some(2000));
        assert_eq!(milli(&json!(2)), Some(2000));
        assert_eq!(milli(&json!("1Ki")), Some(1_024_000));
        assert_eq!(milli(&json!("1e3")), Some(1_000_000));
        assert_eq!(milli(&json!("-1")), Some(-1000));
        assert_eq!(bytes("1.5Gi"), Some(1_610_612_736));
        assert_eq!(bytes("128974848"), Some(128_974_848));
        assert_eq!(bytes("129e6"), Some(129_000_000));
        assert_eq!(bytes("123Mi"), Some(128_974_848));
        assert_eq!(bytes("100m"), Some(0));
        assert_eq!(bytes("-1Gi"), None);
        assert_eq!(millis("250m"), Some(250));
        assert_eq!(millis("0.5"), Some(500));
        assert_eq!(milli_of("1.0000001"), Some(1001), "rounded up");
        assert_eq!(milli_of("-1.0000001"), Some(-1000), "rounded up, towards zero");
        assert_eq!(milli_of("0.1m"), Some(1));
        assert_eq!(milli_of(".5"), Some(500));
        assert_eq!(milli_of("1e100"), None, "does not fit");
        for bad in ["", "x", "1X", "1e", "Mi", "1..2", "1 Gi", "-", ".", "1-2", "+-1"] {
            assert_eq!(milli_of(bad), None, "{bad:?}");
        }
    }

    const SUFFIXES: [(&str, u64); 11] = [
        ("", 1),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("e3", 1_000),
        ("E", 1_000_000_000_000_000_000),
    ];

    proptest! {
        /// An integer with any suffix is that many units exactly.
        #[test]
        fn integers_with_suffixes(n in 0u64..100_000, s in 0..SUFFIXES.len()) {
            let (suffix, mult) = SUFFIXES[s];
            let want = u128::from(n) * u128::from(mult);
            prop_assume!(want <= u128::from(u64::MAX));
            prop_assert_eq!(bytes(&format!("{n}{suffix}")), Some(want as u64));
            prop_assert_eq!(milli_of(&format!("{n}{suffix}")), Some(want as i128 * 1000));
        }

        /// Thousandths: `Nm` is N, a decimal `a.bcd` is a*1000+bcd.
        #[test]
        fn milli_units_and_decimals(n in 0u64..10_000_000, a in 0u64..100_000, b in 0u64..1000) {
            prop_assert_eq!(millis(&format!("{n}m")), Some(n));
            prop_assert_eq!(millis(&format!("{a}.{b:03}")), Some(a * 1000 + b));
            prop_assert_eq!(milli(&json!(a)), Some(i128::from(a) * 1000));
        }

        /// No input makes the parser panic; what it accepts is never negative for bytes.
        #[test]
        fn any_text_is_an_answer_not_a_panic(s in "\\PC{0,12}") {
            let _ = milli_of(&s);
            let _ = bytes(&s);
            let _ = millis(&s);
        }

        /// Order is kept: more of a unit is never fewer bytes.
        #[test]
        fn monotonic(a in 0u64..1_000_000, b in 0u64..1_000_000, s in 0..SUFFIXES.len() - 1) {
            let (suffix, _) = SUFFIXES[s];
            let (x, y) = (bytes(&format!("{a}{suffix}")), bytes(&format!("{b}{suffix}")));
            prop_assert_eq!(a.cmp(&b), x.cmp(&y));
        }
    }
}
