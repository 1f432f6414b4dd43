//! What sealing costs a verification: nanoseconds per AES-256-GCM open of a 20-byte secret (what
//! every code check does first), next to a skew-1 window match (three HMAC-SHA1 codes).
//! `bench/run` divides the first by create_challenge's server CPU per transaction.
//!
//!     cargo run --release -p totp_core --example seal_cost

use std::hint::black_box;
use std::time::Instant;

use totp_core::otp::{self, Algorithm, CodeParams};
use totp_core::sealed;

fn median_ns(mut f: impl FnMut(), iterations: u32) -> f64 {
    let mut runs: Vec<f64> = (0..7)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iterations {
                f();
            }
            start.elapsed().as_nanos() as f64 / f64::from(iterations)
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[runs.len() / 2]
}

fn main() {
    let key = [7u8; sealed::KEY_BYTES];
    let secret = *b"12345678901234567890";
    let aad = b"YF0123456789abcdef0123456789abcdef";
    let sealed_secret = sealed::seal(&key, aad, &secret);
    let open = median_ns(|| _ = black_box(sealed::open(&key, black_box(aad), black_box(&sealed_secret))), 200_000);
    let params = CodeParams { alg: Algorithm::Sha1, digits: 6, step_seconds: 30, skew: 1 };
    let window =
        median_ns(|| _ = black_box(otp::match_step(&secret, black_box("123456"), 1_000_000, None, params)), 200_000);
    println!("aes_gcm_open_ns {open:.0}");
    println!("window_match_ns {window:.0}");
}
