//! The JSON Canonicalization Scheme (RFC 8785): one byte string per JSON
//! value, whatever its formatting, so that a digest of a call's arguments
//! binds exactly those arguments. Object members are sorted by their keys'
//! UTF-16 code units, numbers are written as ECMAScript writes an IEEE 754
//! double, strings as `JSON.stringify` escapes them, and there is no
//! whitespace.

use serde_json::Value;

/// Why a value has no canonical form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A number that is not finite (JSON has none, but a `Value` built in
    /// code might).
    #[error("a number that is not finite has no canonical form")]
    NotFinite,
}

/// The canonical form of `v`.
pub fn canonicalize(v: &Value) -> Result<String, Error> {
    let mut out = String::new();
    write(v, &mut out)?;
    Ok(out)
}

fn write(v: &Value, out: &mut String) -> Result<(), Error> {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            let f = n.as_f64().ok_or(Error::NotFinite)?;
            out.push_str(&number(f)?);
        }
        // serde_json escapes exactly as JSON.stringify does: `"`, `\`, the
        // short forms \b \f \n \r \t, other controls as \u00xx (lower-case
        // hex), nothing else.
        Value::String(s) => out.push_str(&Value::String(s.clone()).to_string()),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(x, out)?;
            }
            out.push(']');
        }
        Value::Object(m) => {
            let mut keys: Vec<(&String, Vec<u16>)> =
                m.keys().map(|k| (k, k.encode_utf16().collect())).collect();
            keys.sort_by(|a, b| a.1.cmp(&b.1));
            out.push('{');
            for (i, (k, _)) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write(&m[k], out)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

/// `x` as ECMAScript's `Number.prototype.toString` writes it (ECMA-262,
/// Number::toString): the shortest digits that round-trip, in decimal
/// notation for magnitudes from 1e-6 up to 1e21, in exponent notation
/// otherwise; `-0` is `0`.
pub fn number(x: f64) -> Result<String, Error> {
    if !x.is_finite() {
        return Err(Error::NotFinite);
    }
    if x == 0.0 {
        return Ok("0".to_owned());
    }
    // The shortest round-trip digits (Rust's `{:e}` gives them, as
    // `d.ddde±x`), then ECMAScript's layout.
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let digits = digits.trim_end_matches('0');
    let digits = if digits.is_empty() { "0" } else { digits };
    // x = 0.digits × 10^n, with k digits.
    let k = i32::try_from(digits.len()).unwrap_or(i32::MAX);
    let n = exp + 1;
    let mut out = String::new();
    if x < 0.0 {
        out.push('-');
    }
    if k <= n && n <= 21 {
        out.push_str(digits);
        out.extend(std::iter::repeat_n(
            '0',
            usize::try_from(n - k).unwrap_or(0),
        ));
    } else if 0 < n && n <= 21 {
        let (a, b) = digits.split_at(usize::try_from(n).unwrap_or(0));
        out.push_str(a);
        out.push('.');
        out.push_str(b);
    } else if -6 < n && n <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', usize::try_from(-n).unwrap_or(0)));
        out.push_str(digits);
    } else {
        let (first, rest) = digits.split_at(1);
        out.push_str(first);
        if !rest.is_empty() {
            out.push('.');
            out.push_str(rest);
        }
        out.push('e');
        out.push(if n > 0 { '+' } else { '-' });
        out.push_str(&(n - 1).abs().to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_as_ecmascript_writes_them() {
        // RFC 8785, appendix B: IEEE 754 bit patterns and their forms.
        let cases: [(u64, &str); 15] = [
            (0x0000_0000_0000_0000, "0"),
            (0x8000_0000_0000_0000, "0"),
            (0x0000_0000_0000_0001, "5e-324"),
            (0x8000_0000_0000_0001, "-5e-324"),
            (0x7fef_ffff_ffff_ffff, "1.7976931348623157e+308"),
            (0xffef_ffff_ffff_ffff, "-1.7976931348623157e+308"),
            (0x4340_0000_0000_0000, "9007199254740992"),
            (0xc340_0000_0000_0000, "-9007199254740992"),
            (0x4430_0000_0000_0000, "295147905179352830000"),
            (0x44b5_2d02_c7e1_4af5, "9.999999999999997e+22"),
            (0x44b5_2d02_c7e1_4af6, "1e+23"),
            (0x3eb0_c6f7_a0b5_ed8d, "0.000001"),
            (0x3eb0_c6f7_a0b5_ed8c, "9.999999999999997e-7"),
            (0x41b3_de43_5555_5553, "333333333.3333332"),
            (0x4415_af1d_78b5_8c40, "100000000000000000000"),
        ];
        for (bits, want) in cases {
            assert_eq!(number(f64::from_bits(bits)).unwrap(), want, "{bits:#x}");
        }
        assert_eq!(number(f64::NAN), Err(Error::NotFinite));
        assert_eq!(number(4.5).unwrap(), "4.5");
        assert_eq!(number(0.002).unwrap(), "0.002");
        assert_eq!(number(1e21).unwrap(), "1e+21");
        assert_eq!(number(1e-7).unwrap(), "1e-7");
        assert_eq!(number(123.0).unwrap(), "123");
    }

    #[test]
    fn the_rfc_example_is_canonical() {
        // RFC 8785, section 3.2.2 (input) and 3.2.3 (output).
        let input = r#"{
          "numbers": [333333333.33333329, 1E30, 4.50,
                      2e-3, 0.000000000000000000000000001],
          "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
          "literals": [null, true, false]
        }"#;
        let v: Value = serde_json::from_str(input).unwrap();
        assert_eq!(
            canonicalize(&v).unwrap(),
            r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
        );
    }

    #[test]
    fn keys_sort_by_utf16_code_units() {
        // U+1F600 (a surrogate pair, 0xD83D…) sorts before U+FB33 (0xFB33)
        // in UTF-16, after it in UTF-8.
        let v = serde_json::json!({"\u{FB33}": 1, "\u{1F600}": 2, "a": 3});
        assert_eq!(
            canonicalize(&v).unwrap(),
            "{\"a\":3,\"\u{1F600}\":2,\"\u{FB33}\":1}"
        );
    }
}
