//! Lower-case hex for ids written on the hot path (trace and span ids in log lines and
//! `traceparent`, the gateway's request ids), without the formatting machinery.

/// Writes `bytes` as lower-case hex into `out`, which must be twice as long (a debug build
/// checks): one table lookup and one two-byte copy per byte. (Whole-word arithmetic on eight
/// bytes at a time was measured too: more instructions for a trace id than the table.)
pub fn encode_lower(bytes: &[u8], out: &mut [u8]) {
    const PAIRS: [[u8; 2]; 256] = {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut pairs = [[0u8; 2]; 256];
        let mut b = 0;
        while b < 256 {
            pairs[b] = [DIGITS[b >> 4], DIGITS[b & 0xf]];
            b += 1;
        }
        pairs
    };
    debug_assert_eq!(out.len(), 2 * bytes.len());
    for (pair, &b) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&PAIRS[usize::from(b)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn two_lower_case_digits_a_byte() {
        let bytes: Vec<u8> = (0..=255).collect();
        let mut out = vec![0u8; 512];
        encode_lower(&bytes, &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), expected(&bytes));
    }

    #[test]
    fn every_length() {
        for len in 0..=25u8 {
            for start in [0u8, 0x09, 0x0a, 0x99, 0xa9, 0xf0, 0xff] {
                let bytes: Vec<u8> = (0..len)
                    .map(|i| start.wrapping_add(i.wrapping_mul(37)))
                    .collect();
                let mut out = vec![0u8; 2 * bytes.len()];
                encode_lower(&bytes, &mut out);
                assert_eq!(
                    String::from_utf8(out).unwrap(),
                    expected(&bytes),
                    "{bytes:?}"
                );
            }
        }
    }
}
