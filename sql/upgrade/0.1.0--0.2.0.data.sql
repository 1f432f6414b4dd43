-- Rows as totp_verify 0.1.0 stored them, for scripts/check-upgrade (not shipped).
INSERT INTO totp.services (sid, friendly_name, max_challenge_attempts, date_created, date_updated)
VALUES ('VA00000000000000000000000000000001', 'Upgraded', 3, now(), now());
INSERT INTO totp.entities (identity, service_sid, sid, date_created, date_updated)
VALUES ('user-1', 'VA00000000000000000000000000000001', 'YE00000000000000000000000000000001', now(), now());
INSERT INTO totp_private.factors (identity, sid, service_sid, entity_sid, friendly_name, status, alg, code_length,
                                  time_step, skew, date_created, date_updated, last_step)
VALUES ('user-1', 'YF00000000000000000000000000000001', 'VA00000000000000000000000000000001',
        'YE00000000000000000000000000000001', 'phone', 'verified', 'sha1', 6, 30, 1,
        now() - interval '2 days', now() - interval '1 day', 1000);
INSERT INTO totp_private.challenges (identity, sid, service_sid, entity_sid, factor_sid, status, expiration_date,
                                     date_responded, date_created, date_updated)
VALUES ('user-1', 'YC00000000000000000000000000000001', 'VA00000000000000000000000000000001',
        'YE00000000000000000000000000000001', 'YF00000000000000000000000000000001', 'approved',
        now() + interval '5 minutes', now(), now(), now());
-- An application's policy on the three-argument has_recent_approval: the update must keep it.
CREATE TABLE public.payouts (user_id text);
ALTER TABLE public.payouts ENABLE ROW LEVEL SECURITY;
CREATE POLICY recent ON public.payouts
    USING (totp.has_recent_approval('VA00000000000000000000000000000001', user_id, '5 minutes'));
CREATE ROLE totp_upgrade_admin_check;
GRANT EXECUTE ON FUNCTION totp.update_service(text, text, text, integer, integer, integer) TO totp_upgrade_admin_check;
