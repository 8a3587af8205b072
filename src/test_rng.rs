//! The unit tests' pseudo-random operands, the same on every run.

/// Marsaglia's xorshift64 (shifts 13, 7, 17) from a nonzero `seed`.
pub(crate) fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut state = seed;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}
