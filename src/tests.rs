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

    // ----- Citus shapes (issue 13 items 1 and 2, SPEC §11) -----

    const SERVICE_SID: &str = "VA0123456789abcdef0123456789abcdef";
    const FACTOR_SID: &str = "YF0123456789abcdef0123456789abcdef";
    const SECRET: &str = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";

    // PostgreSQL 15 renamed parse_analyze (same arguments).
    #[cfg(feature = "pg14")]
    use pg_sys::parse_analyze as parse_analyze_fixedparams;
    #[cfg(not(feature = "pg14"))]
    use pg_sys::parse_analyze_fixedparams;

    /// What is wrong with a statement's shape for Citus, if anything: a whole-row reference to a
    /// relation (Citus cannot cast a shard's row type to the table's), and, when `strict`, any
    /// non-IMMUTABLE function (Citus refuses them in ON CONFLICT DO UPDATE, in UPDATE SET with
    /// column references, in CASE/COALESCE and in RETURNING of a distributed modification).
    fn shape_problems(sql: &crate::db::Sql, strict: bool) -> Vec<String> {
        let text = std::ffi::CString::new(sql.text).unwrap();
        let mut types: Vec<pg_sys::Oid> = sql.params.iter().map(|oid| oid.value()).collect();
        let mut problems = Vec::new();
        // SAFETY: parses and analyzes a statement of this extension in the current transaction;
        // every list and node comes from the parser.
        unsafe {
            let raw = pg_sys::raw_parser(text.as_ptr(), pg_sys::RawParseMode::RAW_PARSE_DEFAULT);
            let count = if raw.is_null() { 0 } else { (*raw).length as usize };
            for i in 0..count {
                let stmt = (*(*raw).elements.add(i)).ptr_value.cast::<pg_sys::RawStmt>();
                let query = parse_analyze_fixedparams(
                    stmt,
                    text.as_ptr(),
                    types.as_mut_ptr(),
                    types.len() as i32,
                    std::ptr::null_mut(),
                );
                forget_excluded(query);
                let dump = std::ffi::CStr::from_ptr(pg_sys::nodeToString(query.cast())).to_string_lossy().into_owned();
                if dump.contains(":varattno 0 ") {
                    problems.push("whole-row reference".to_string());
                }
                if strict && pg_sys::contain_mutable_functions(query.cast()) {
                    problems.push("non-IMMUTABLE function".to_string());
                }
            }
        }
        problems
    }

    /// Drops the target list Postgres builds for ON CONFLICT's EXCLUDED pseudo-relation (it always
    /// holds a whole-row Var, for `EXCLUDED.*`), here and in the statement's CTEs.
    ///
    /// # Safety
    /// `query` must be a Query from parse analysis.
    unsafe fn forget_excluded(query: *mut pg_sys::Query) {
        if !(*query).onConflict.is_null() {
            (*(*query).onConflict).exclRelTlist = std::ptr::null_mut();
        }
        let ctes = (*query).cteList;
        let count = if ctes.is_null() { 0 } else { (*ctes).length as usize };
        for i in 0..count {
            let cte = (*(*ctes).elements.add(i)).ptr_value.cast::<pg_sys::CommonTableExpr>();
            forget_excluded((*cte).ctequery.cast());
        }
    }

    /// A statement that writes a per-identity table (the tables Citus distributes by identity).
    fn writes_per_identity_table(text: &str) -> bool {
        ["entities", "factors", "factor_secrets", "challenges", "events"].iter().any(|table| {
            ["INSERT INTO", "UPDATE", "DELETE FROM"]
                .iter()
                .any(|verb| text.contains(&format!("{verb} totp_private.{table} ")))
        })
    }

    #[pg_test]
    fn shape_check_catches_what_citus_refuses() {
        use crate::db::{Sql, INT8, TEXT, TIMESTAMPTZ};
        static WHOLE_ROW: Sql = Sql { text: "SELECT s FROM totp.services s WHERE s.sid = $1", params: &[TEXT] };
        static RETURNING_ROW: Sql = Sql {
            text: "UPDATE totp_private.services AS s SET friendly_name = $2 WHERE s.sid = $1 RETURNING s",
            params: &[TEXT, TEXT],
        };
        // 0.2.0's entity upsert and replay-guard update.
        static STABLE_CUTOFF: Sql = Sql {
            text: "INSERT INTO totp_private.entities AS e (identity, service_sid, sid, date_created, date_updated) \
                   VALUES ($1, $2, $3, $4, $4) ON CONFLICT (identity, service_sid) DO UPDATE SET \
                   factor_window_start = CASE WHEN e.factor_window_start > $4 - $5 * interval '1 microsecond' \
                   THEN e.factor_window_start ELSE $4 END",
            params: &[TEXT, TEXT, TEXT, TIMESTAMPTZ, INT8],
        };
        static STABLE_JSON: Sql = Sql {
            text: "UPDATE totp_private.factors AS f SET replay_guards = \
                   pg_catalog.jsonb_build_object(f.time_step::text, f.last_step) WHERE f.identity = $1",
            params: &[TEXT],
        };
        static FINE: Sql = Sql {
            text: "UPDATE totp_private.factors AS f SET replay_guards = \
                   ('{\"' || f.time_step::text || '\": ' || f.last_step::text || '}')::jsonb \
                   WHERE f.identity = $1 RETURNING f.sid",
            params: &[TEXT],
        };
        assert_eq!(shape_problems(&WHOLE_ROW, false), ["whole-row reference"]);
        assert_eq!(shape_problems(&RETURNING_ROW, false), ["whole-row reference"]);
        assert_eq!(shape_problems(&STABLE_CUTOFF, true), ["non-IMMUTABLE function"]);
        assert_eq!(shape_problems(&STABLE_JSON, true), ["non-IMMUTABLE function"]);
        assert!(shape_problems(&FINE, true).is_empty());
        assert!(writes_per_identity_table(STABLE_CUTOFF.text) && writes_per_identity_table(FINE.text));
        assert!(!writes_per_identity_table(WHOLE_ROW.text));
    }

    /// Every statement the state functions ran: no whole-row reference anywhere, and no
    /// non-IMMUTABLE function in a per-identity write, but for the cross-identity housekeeping and
    /// the multi-row deletion events (gen_random_uuid() per row) named below.
    #[pg_test]
    fn statements_have_shapes_citus_accepts() {
        let svc = SERVICE_SID;
        let code = |offset: i64| -> String {
            one(&format!("SELECT totp.totp_code(totp.base32_decode('{SECRET}'), now() + interval '{offset} seconds')"))
        };
        let wrong = |right: &str| if right == "000000" { "111111".to_string() } else { "000000".to_string() };
        Spi::run(&format!("SELECT totp.create_service('Acme', sid => '{svc}')")).unwrap();
        Spi::run(&format!("SELECT totp.create_service('Acme', sid => '{svc}')")).unwrap();
        Spi::run(&format!("SELECT totp.update_service('{svc}', max_factor_attempts => 6)")).unwrap();
        Spi::run(&format!("SELECT totp.create_entity('{svc}', 'user-2')")).unwrap();
        Spi::run(&format!(
            "SELECT totp.create_factor('{svc}', 'user-1', 'a', secret => '{SECRET}', sid => '{FACTOR_SID}')"
        ))
        .unwrap();
        Spi::run(&format!("SELECT totp.create_factor('{svc}', 'user-1', 'b')")).unwrap();
        // Re-sealing reads many identities but locks and writes one row at a time, by identity.
        Spi::run("SELECT * FROM totp.rotate_key()").unwrap();
        let added: i64 = one("SELECT totp.add_key()");
        Spi::run(&format!("SELECT * FROM totp.rotate_key(key_id => {added})")).unwrap();
        let f = FACTOR_SID;
        let status: String =
            one(&format!("SELECT status FROM totp.verify_factor('{svc}', 'user-1', '{f}', '{}')", wrong(&code(0))));
        assert_eq!(status, "unverified");
        let status: String =
            one(&format!("SELECT status FROM totp.verify_factor('{svc}', 'user-1', '{f}', '{}')", code(0)));
        assert_eq!(status, "verified");
        let challenge: String =
            one(&format!("SELECT sid FROM totp.create_challenge('{svc}', 'user-1', '{f}', '{}')", wrong(&code(30))));
        let status: String =
            one(&format!("SELECT status FROM totp.update_challenge('{svc}', 'user-1', '{challenge}', '{}')", code(30)));
        assert_eq!(status, "approved");
        assert!(one::<bool>(&format!("SELECT totp.has_recent_approval('{svc}', 'user-1', '5 minutes')")));
        // Every variant of the verification statements: wrong answers that leave the challenge
        // pending, then the one that denies it (its event in the same statement), and a challenge
        // created denied (max_challenge_attempts 1: the creation's statement records the event).
        let pending: String =
            one(&format!("SELECT sid FROM totp.create_challenge('{svc}', 'user-1', '{f}', '{}')", wrong(&code(0))));
        for expected in ["pending", "pending", "pending", "denied"] {
            let status: String = one(&format!(
                "SELECT status FROM totp.update_challenge('{svc}', 'user-1', '{pending}', '{}')",
                wrong(&code(0))
            ));
            assert_eq!(status, expected);
        }
        Spi::run(&format!("SELECT totp.update_service('{svc}', max_challenge_attempts => 1)")).unwrap();
        let status: String =
            one(&format!("SELECT status FROM totp.create_challenge('{svc}', 'user-1', '{f}', '{}')", wrong(&code(0))));
        assert_eq!(status, "denied");
        Spi::run(&format!("SELECT totp.update_service('{svc}', max_challenge_attempts => 5)")).unwrap();
        Spi::run(&format!("SELECT totp.create_challenge('{svc}', 'user-1', '{f}')")).unwrap();
        // There and back: parks the replay guard under 30, then takes it up again; expires pending.
        let last_step: i64 = one(&format!("SELECT last_step FROM totp_private.factors WHERE sid = '{f}'"));
        Spi::run(&format!("SELECT totp.update_factor('{svc}', 'user-1', '{f}', time_step => 60)")).unwrap();
        let parked: String = one(&format!("SELECT replay_guards::text FROM totp_private.factors WHERE sid = '{f}'"));
        assert_eq!(parked, format!("{{\"30\": {last_step}}}"));
        Spi::run(&format!("SELECT totp.update_factor('{svc}', 'user-1', '{f}', time_step => 30)")).unwrap();
        let back: i64 = one(&format!("SELECT last_step FROM totp_private.factors WHERE sid = '{f}'"));
        assert_eq!(back, last_step);
        // The identity-scoped reads a PL/Proxy router sends, on the same shard rules.
        for read in [
            format!("SELECT * FROM totp.get_service('{svc}')"),
            "SELECT * FROM totp.list_services()".to_string(),
            format!("SELECT * FROM totp.get_entity('{svc}', 'user-1')"),
            format!("SELECT * FROM totp.get_factor('{svc}', 'user-1', '{f}')"),
            format!("SELECT * FROM totp.list_factors('{svc}', 'user-1')"),
            format!("SELECT * FROM totp.get_challenge('{svc}', 'user-1', '{challenge}')"),
            format!("SELECT * FROM totp.list_challenges('{svc}', 'user-1', '{f}', 'approved', true)"),
        ] {
            assert!(one::<i64>(&format!("SELECT count(*) FROM ({read}) r")) >= 1, "{read}");
        }
        Spi::run(&format!("SELECT totp.delete_factor('{svc}', 'user-1', '{f}')")).unwrap();
        Spi::run(&format!("SELECT totp.delete_entity('{svc}', 'user-1')")).unwrap();
        Spi::run("SELECT * FROM totp.run_maintenance()").unwrap();
        Spi::run(&format!("SELECT totp.delete_service('{svc}')")).unwrap();

        let exempt = [
            &crate::api::events::RECORD_ENTITY_DELETION as *const crate::db::Sql,
            &crate::api::events::RECORD_SERVICE_DELETION,
            &crate::api::maintenance::PRUNE_EVENTS,
        ];
        let executed = crate::db::EXECUTED.with(|done| done.borrow().clone());
        for (name, sql) in crate::api::verification_statements() {
            assert!(executed.iter().any(|done| std::ptr::eq(*done, sql)), "the run did not execute {name}");
        }
        let texts: Vec<&str> = executed.iter().map(|sql| sql.text).collect();
        for needle in [
            "ON CONFLICT (identity, service_sid) DO UPDATE",
            "ON CONFLICT (sid) DO NOTHING",
            "replay_guards = CASE",
            "c AS (INSERT INTO totp_private.challenges",
            "FOR UPDATE OF f FOR UPDATE OF c",
            ")::totp.services",
            ")::totp.factors",
            ")::totp.new_factor",
            ")::totp.challenges",
            "INSERT INTO totp_private.events",
            "AND key_id <> $3 FOR UPDATE SKIP LOCKED",
        ] {
            assert!(texts.iter().any(|t| t.contains(needle)), "the run did not execute a statement with {needle:?}");
        }
        let mut bad = Vec::new();
        let mut strict_checked = 0;
        for sql in &executed {
            let strict = writes_per_identity_table(sql.text) && !exempt.contains(&(*sql as *const _));
            strict_checked += usize::from(strict);
            for problem in shape_problems(sql, strict) {
                bad.push(format!("{problem}: {}", sql.text));
            }
        }
        // Under Citus's forced delegation every statement of an identity-scoped call must stay on
        // the identity's shard: one that also reads the services reference table is refused
        // ("queries must filter by the distribution argument in the same colocation group").
        for sql in &executed {
            let per_identity = ["entities", "factors", "factor_secrets", "challenges", "events"]
                .iter()
                .any(|table| sql.text.contains(&format!("totp_private.{table} ")));
            if per_identity && sql.text.contains("totp_private.services") && !exempt.contains(&(*sql as *const _)) {
                bad.push(format!("joins the services reference table to a shard: {}", sql.text));
            }
        }
        // A row lock on a per-identity table must be a query on one identity: Citus cannot lock
        // rows of a query over many shards.
        for sql in &executed {
            let locks =
                ["FOR UPDATE", "FOR NO KEY UPDATE", "FOR SHARE", "FOR KEY SHARE"].iter().any(|l| sql.text.contains(l));
            let per_identity = ["entities", "factors", "factor_secrets", "challenges", "events"]
                .iter()
                .any(|table| sql.text.contains(&format!("FROM totp_private.{table} ")));
            if locks && per_identity && !sql.text.contains("identity = $") {
                bad.push(format!("row lock over many identities: {}", sql.text));
            }
        }
        assert!(strict_checked >= 12, "only {strict_checked} per-identity writes were checked");
        assert!(bad.is_empty(), "statements Citus would refuse:\n{}", bad.join("\n"));
    }
}
