//! Pure logic of totp_verify, free of pgrx so that plain `cargo test` (and `cargo fuzz`) cover it.
//!
//! - [`otp`]: RFC 4226 HOTP and RFC 6238 TOTP, and the replay-aware window match.
//! - [`base32`]: RFC 4648 base32 with the tolerance authenticator users expect.
//! - [`uri`]: the Key Uri Format (`otpauth://`) used by `binding_uri`.
//! - [`partition`]: the identity hash and partition rule of a PL/Proxy deployment.
//! - [`sid`]: Twilio-style resource SIDs from the OS CSPRNG.
//! - [`validate`]: the argument rules of SPEC §5.
//! - [`sealed`], [`keyfile`]: AEAD sealing of secrets at rest and the key file (SPEC §8).

pub mod base32;
pub mod keyfile;
pub mod otp;
pub mod partition;
pub mod random;
pub mod sealed;
pub mod sid;
pub mod uri;
pub mod validate;
