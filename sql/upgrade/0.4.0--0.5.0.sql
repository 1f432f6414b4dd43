-- totp_verify 0.4.0 -> 0.5.0. Keeps every row; see README "Upgrading".

-- ---- issue 16 (faster than doing it yourself) -------------------------------------------------
-- The tables every verification writes lose their CHECK constraints: Postgres re-reads and
-- re-plans a table's CHECK expressions in every statement that writes it (about a third of
-- create_challenge's time in 0.4.0). Only the extension writes them, and every value they held to
-- is checked in Rust before it is written (see sql/bootstrap.sql). Rows are unchanged.
ALTER TABLE totp_private.factors
    DROP CONSTRAINT factors_factor_type_check,
    DROP CONSTRAINT factors_status_check,
    DROP CONSTRAINT factors_alg_check,
    DROP CONSTRAINT factors_code_length_check,
    DROP CONSTRAINT factors_time_step_check,
    DROP CONSTRAINT factors_skew_check;
ALTER TABLE totp_private.challenges
    DROP CONSTRAINT challenges_factor_type_check,
    DROP CONSTRAINT challenges_status_check,
    DROP CONSTRAINT challenges_responded_reason_check;
ALTER TABLE totp_private.events
    DROP CONSTRAINT events_type_check;
-- ---- end of issue 16 ---------------------------------------------------------------------------
