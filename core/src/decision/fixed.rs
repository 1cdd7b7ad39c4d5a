//! Fixed-point formatting of the numbers in decision explanations.
//!
//! `format!("{:.1}", x)` takes the exact (Dragon) path of the float formatter, and every
//! decision of every window formats about six such numbers: on a collector where every
//! observation closes a window that was a tenth of its work. Scaling by 10^digits and printing
//! two integers costs a fraction of that. The last digit may differ from `{:.N}` on exact binary
//! ties (x.x5 stored exactly), which an explanation can afford.

use std::fmt;

/// `x` with `digits` decimals (at most 6); non-finite or huge values fall back to `{:.N}`.
#[derive(Debug, Clone, Copy)]
pub struct Fixed(pub f64, pub usize);

/// Above this magnitude the scaled value would not fit the integer path exactly.
const INTEGER_PATH_LIMIT: f64 = 1e12;

impl fmt::Display for Fixed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Fixed(x, digits) = *self;
        let digits = digits.min(6);
        if !x.is_finite() || x.abs() >= INTEGER_PATH_LIMIT {
            return write!(f, "{x:.digits$}");
        }
        let scale = 10_u64.pow(u32::try_from(digits).unwrap_or(6));
        // Exact: |x| < 1e12 and scale <= 1e6 keep the product below 2^63.
        #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
        let scaled = (x.abs() * scale as f64).round() as u64;
        // `{:.N}` prints a negative value that rounds to zero as "-0.0"; so does this.
        let sign = if x.is_sign_negative() { "-" } else { "" };
        let (int, frac) = (scaled / scale, scaled % scale);
        if digits == 0 {
            write!(f, "{sign}{int}")
        } else {
            write!(f, "{sign}{int}.{frac:0digits$}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Fixed;

    #[test]
    fn matches_the_float_formatter_away_from_ties() {
        let values = [
            0.0,
            -0.0,
            1.0,
            0.04,
            0.06,
            9.96,
            99.99,
            123.456,
            1e6 + 0.3,
            2.0 / 3.0,
            -2.0 / 3.0,
            -0.04,
            42.0,
            1e11 + 0.7,
            0.123_456_7,
        ];
        for x in values {
            for digits in 0..=3 {
                assert_eq!(
                    Fixed(x, digits).to_string(),
                    format!("{x:.digits$}"),
                    "{x} with {digits} digits"
                );
            }
        }
    }

    #[test]
    fn non_finite_and_huge_values_fall_back() {
        for x in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 3.5e15, -7.25e20] {
            assert_eq!(Fixed(x, 1).to_string(), format!("{x:.1}"));
        }
    }
}
