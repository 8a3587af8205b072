//! A fixed-seed generator (SplitMix64) and the value distributions the cases
//! draw from. Integer and basic f32 arithmetic only (no libm), so the same
//! seed gives the same inputs on every platform.

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    /// A generator for a named case: the seed is a hash of the name, so
    /// adding or removing cases does not change the others' inputs.
    pub fn for_case(name: &str) -> Self {
        let mut h = 0xcbf2_9ce4_8422_2325u64; // FNV-1a
        for b in name.bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        Rng::new(h)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), 24 random bits.
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / 16_777_216.0
    }

    /// Uniform in (0, 1].
    pub fn unit_open(&mut self) -> f32 {
        ((self.next_u64() >> 40) + 1) as f32 / 16_777_216.0
    }

    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    pub fn sign(&mut self) -> f32 {
        if self.next_u64() & 1 == 0 {
            1.0
        } else {
            -1.0
        }
    }

    /// Roughly standard normal: the sum of four uniforms (Irwin–Hall),
    /// centred and scaled to unit variance.
    pub fn normalish(&mut self) -> f32 {
        let s = self.unit() + self.unit() + self.unit() + self.unit();
        (s - 2.0) * 1.732_050_8
    }

    /// Heavy-tailed (Cauchy-like tail): a normal-ish value over a uniform.
    pub fn heavy(&mut self) -> f32 {
        self.normalish() / self.unit_open()
    }

    /// `sign * (1 + u) * 2^e` with `e` uniform in `[lo, hi]`: values spread
    /// evenly over many binades (subnormal when `e < -126`).
    pub fn log_uniform(&mut self, lo: i32, hi: i32) -> f32 {
        let e = lo + self.below((hi - lo + 1) as u64) as i32;
        let m = 1.0 + self.unit();
        self.sign() * m * pow2(e)
    }

    pub fn i8_any(&mut self) -> i8 {
        self.next_u64() as u8 as i8
    }
}

/// `2^e` for e in [-149, 127], exactly.
pub fn pow2(e: i32) -> f32 {
    assert!((-149..=127).contains(&e));
    if e >= -126 {
        f32::from_bits(((e + 127) as u32) << 23)
    } else {
        f32::from_bits(1u32 << (e + 149))
    }
}

/// The value distributions of generated inputs.
#[derive(Clone, Copy, Debug)]
pub enum Dist {
    /// Normal-ish with this standard deviation.
    Normal(f32),
    /// Uniform in [-a, a).
    Uniform(f32),
    /// Heavy-tailed, scaled by this factor.
    Heavy(f32),
    /// Normal-ish(sigma), with every `every`-th value (a channel, in a
    /// row-major matrix whose row length is a multiple of `every`...) times
    /// `factor`: outlier channels as in LLM activations.
    Outliers {
        sigma: f32,
        every: usize,
        factor: f32,
    },
    /// Log-uniform over binades [lo, hi] (random signs).
    LogUniform(i32, i32),
    /// Integers in [-k, k].
    Ints(i32),
    /// Mostly zeros (and -0.0); one in `one_in` values normal-ish.
    Sparse(u32),
    /// Positive values `offset + normalish * sigma` (a large mean).
    Offset { offset: f32, sigma: f32 },
    /// One value repeated.
    Const(f32),
}

impl Dist {
    pub fn tag(&self) -> String {
        match *self {
            Dist::Normal(s) => format!("normal{s:e}"),
            Dist::Uniform(a) => format!("uniform{a:e}"),
            Dist::Heavy(s) => format!("heavy{s:e}"),
            Dist::Outliers {
                sigma,
                every,
                factor,
            } => format!("outliers{sigma:e}/{every}x{factor}"),
            Dist::LogUniform(lo, hi) => format!("log2^[{lo},{hi}]"),
            Dist::Ints(k) => format!("ints{k}"),
            Dist::Sparse(k) => format!("sparse1/{k}"),
            Dist::Offset { offset, sigma } => format!("offset{offset:e}+-{sigma:e}"),
            Dist::Const(v) => format!("const{v:e}"),
        }
    }

    /// `n` values; for `Outliers`, `cols` is the row length that channels
    /// repeat with (the index within the row decides outlier channels).
    pub fn sample(&self, rng: &mut Rng, n: usize, cols: usize) -> Vec<f32> {
        let cols = cols.max(1);
        (0..n)
            .map(|i| match *self {
                Dist::Normal(s) => rng.normalish() * s,
                Dist::Uniform(a) => (rng.unit() * 2.0 - 1.0) * a,
                Dist::Heavy(s) => rng.heavy() * s,
                Dist::Outliers {
                    sigma,
                    every,
                    factor,
                } => {
                    let v = rng.normalish() * sigma;
                    if (i % cols) % every.max(1) == every.max(1) / 2 {
                        v * factor
                    } else {
                        v
                    }
                }
                Dist::LogUniform(lo, hi) => rng.log_uniform(lo, hi),
                Dist::Ints(k) => (rng.below(2 * k as u64 + 1) as i64 - k as i64) as f32,
                Dist::Sparse(k) => {
                    if rng.below(k as u64) == 0 {
                        rng.normalish()
                    } else if rng.next_u64() & 1 == 0 {
                        0.0
                    } else {
                        -0.0
                    }
                }
                Dist::Offset { offset, sigma } => offset + rng.normalish() * sigma,
                Dist::Const(v) => v,
            })
            .collect()
    }
}
