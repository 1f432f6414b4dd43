//! `#[pg_test]`s: behaviour inside a real Postgres, each in a transaction that is rolled back.
//! The public contract is tested again from outside, by real clients, in `tests/`.

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn one<T: pgrx::FromDatum + pgrx::IntoDatum>(sql: &str) -> T {
        Spi::get_one::<T>(sql).expect("query failed").expect("NULL result")
    }

    #[pg_test]
    fn rfc6238_vectors_through_sql() {
        let sha1 = "'12345678901234567890'::bytea";
        assert_eq!(
            one::<String>(&format!("SELECT totp.totp_code({sha1}, to_timestamp(59), 30, 8, 'sha1')")),
            "94287082"
        );
        assert_eq!(
            one::<String>(&format!("SELECT totp.totp_code({sha1}, to_timestamp(20000000000), 30, 8)")),
            "65353130"
        );
        assert_eq!(one::<String>(&format!("SELECT totp.hotp_code({sha1}, 9)")), "520489");
    }

    #[pg_test]
    fn register_and_verify_sequences() {
        let service: String = one("SELECT sid FROM totp.create_service('Acme')");
        let (factor, secret): (Option<String>, Option<String>) = Spi::get_two(&format!(
            "SELECT sid, binding_secret FROM totp.create_factor('{service}', 'user-1', 'phone')"
        ))
        .unwrap();
        let (factor, secret) = (factor.unwrap(), secret.unwrap());
        assert_eq!(secret.len(), 32);
        let code = |offset: i64| -> String {
            one(&format!("SELECT totp.totp_code(totp.base32_decode('{secret}'), now() + interval '{offset} seconds')"))
        };
        // A wrong code is a result, not an error.
        let wrong = if code(0) == "000000" { "111111" } else { "000000" };
        let status: String =
            one(&format!("SELECT status FROM totp.verify_factor('{service}', 'user-1', '{factor}', '{wrong}')"));
        assert_eq!(status, "unverified");
        let status: String =
            one(&format!("SELECT status FROM totp.verify_factor('{service}', 'user-1', '{factor}', '{}')", code(0)));
        assert_eq!(status, "verified");
        // The code verify_factor consumed never approves a challenge.
        let status: String =
            one(&format!("SELECT status FROM totp.create_challenge('{service}', 'user-1', '{factor}', '{}')", code(0)));
        assert_eq!(status, "pending");
        // The next step's code does (skew 1).
        let status: String = one(&format!(
            "SELECT status FROM totp.create_challenge('{service}', 'user-1', '{factor}', '{}')",
            code(30)
        ));
        assert_eq!(status, "approved");
    }

    #[pg_test(error = "factor secret cannot be decrypted")]
    fn secrets_are_sealed_and_bound_to_their_row() {
        let service: String = one("SELECT sid FROM totp.create_service('Acme')");
        Spi::run(&format!(
            "SELECT totp.create_factor('{service}', 'u1', 'a', secret => 'GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ')"
        ))
        .unwrap();
        let leaked: bool = one("SELECT bool_or(position('12345678901234567890'::bytea in sealed) > 0) \
             FROM totp_private.factor_secrets");
        assert!(!leaked);
        // Moving a ciphertext onto another factor makes that factor fail loudly, not verify.
        Spi::run(&format!("SELECT totp.create_factor('{service}', 'u1', 'b')")).unwrap();
        Spi::run(
            "UPDATE totp_private.factor_secrets t SET sealed = s.sealed, key_id = s.key_id \
             FROM totp_private.factor_secrets s WHERE s.factor_sid <> t.factor_sid \
               AND s.factor_sid = (SELECT min(factor_sid) FROM totp_private.factor_secrets)",
        )
        .unwrap();
        let victim: String = one("SELECT max(factor_sid) FROM totp_private.factor_secrets");
        Spi::run(&format!("SELECT totp.verify_factor('{service}', 'u1', '{victim}', '123456')")).unwrap();
    }

    #[pg_test]
    fn rotation_reseals_every_secret_and_codes_still_verify() {
        let service: String = one("SELECT sid FROM totp.create_service('Acme')");
        let secret = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";
        let factor: String =
            one(&format!("SELECT sid FROM totp.create_factor('{service}', 'u1', 'a', secret => '{secret}')"));
        let old_key: i64 = one("SELECT key_id FROM totp_private.factor_secrets");
        let (new_key, resealed): (Option<i64>, Option<i64>) =
            Spi::get_two("SELECT new_key_id, resealed FROM totp.rotate_key()").unwrap();
        assert_eq!(resealed, Some(1));
        assert_ne!(new_key, Some(old_key));
        let under_new: bool =
            one(&format!("SELECT bool_and(key_id = {}) FROM totp_private.factor_secrets", new_key.unwrap()));
        assert!(under_new);
        let code: String = one(&format!("SELECT totp.totp_code(totp.base32_decode('{secret}'))"));
        let status: String =
            one(&format!("SELECT status FROM totp.verify_factor('{service}', 'u1', '{factor}', '{code}')"));
        assert_eq!(status, "verified");
    }

    #[pg_test(error = "service not found (Twilio 20404)")]
    fn unknown_service_is_20404() {
        Spi::run("SELECT totp.create_factor('VA00000000000000000000000000000000', 'u1', 'phone')").unwrap();
    }
}
