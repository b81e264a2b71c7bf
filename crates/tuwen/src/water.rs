//! The container-with-most-water problem (LeetCode 11).
//!
//! Given heights `h[0..n]` of vertical lines at x = 0..n, pick two lines that, with the x-axis,
//! hold the most water: maximise `min(h[i], h[j]) * (j - i)`.
//!
//! Two pointers start at both ends. The shorter line bounds every container that uses it with a
//! line further in, and all those are narrower, so none can beat the current one: drop the
//! shorter line and move inwards. Each step discards one line, so the scan is O(n).

use crate::Error;

/// The largest area of water two of `heights` can hold, or an error for fewer than two heights.
pub fn max_area(heights: &[u64]) -> Result<u128, Error> {
    if heights.len() < 2 {
        return Err(Error::InvalidInput(format!(
            "need at least two heights, got {}",
            heights.len()
        )));
    }
    let (mut i, mut j) = (0usize, heights.len() - 1);
    let mut best: u128 = 0;
    while i < j {
        let (hi, hj) = (heights[i], heights[j]);
        let area = u128::from(hi.min(hj)) * (j - i) as u128;
        best = best.max(area);
        if hi < hj {
            i += 1;
        } else {
            j -= 1;
        }
    }
    Ok(best)
}

/// Parses heights written as non-negative integers separated by whitespace or commas.
pub fn parse_heights(text: &str) -> Result<Vec<u64>, Error> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    text.split(|c: char| c.is_whitespace() || c == ',')
        .filter(|s| !s.is_empty())
        .map(parse_height)
        .collect()
}

/// Parses one height: a non-negative integer.
pub fn parse_height(s: &str) -> Result<u64, Error> {
    s.parse::<u64>().map_err(|_| {
        let kind = if s.starts_with('-') && s[1..].parse::<f64>().is_ok() {
            "negative"
        } else {
            "not a non-negative integer"
        };
        Error::InvalidInput(format!("height {s:?} is {kind}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn brute_force(h: &[u64]) -> u128 {
        let mut best = 0;
        for i in 0..h.len() {
            for j in i + 1..h.len() {
                best = best.max(u128::from(h[i].min(h[j])) * (j - i) as u128);
            }
        }
        best
    }

    #[test]
    fn leetcode_example() {
        assert_eq!(max_area(&[1, 8, 6, 2, 5, 4, 8, 3, 7]).unwrap(), 49);
        assert_eq!(max_area(&[1, 1]).unwrap(), 1);
    }

    #[test]
    fn rejects_bad_input() {
        assert!(max_area(&[]).is_err());
        assert!(max_area(&[5]).is_err());
        assert!(
            parse_heights("1 -2 3")
                .unwrap_err()
                .to_string()
                .contains("negative")
        );
        assert!(parse_heights("1 2.5").is_err());
        assert!(parse_heights("1 x").is_err());
        assert_eq!(parse_heights("1,2\n3  4").unwrap(), vec![1, 2, 3, 4]);
    }

    #[test]
    fn huge_heights_do_not_overflow() {
        let h = [u64::MAX, 0, u64::MAX];
        assert_eq!(max_area(&h).unwrap(), u128::from(u64::MAX) * 2);
    }

    proptest! {
        #[test]
        fn matches_brute_force(h in prop::collection::vec(0u64..50, 2..60)) {
            prop_assert_eq!(max_area(&h).unwrap(), brute_force(&h));
        }

        #[test]
        fn matches_brute_force_wide_range(h in prop::collection::vec(any::<u32>(), 2..40)) {
            let h: Vec<u64> = h.into_iter().map(u64::from).collect();
            prop_assert_eq!(max_area(&h).unwrap(), brute_force(&h));
        }
    }
}
