-- Resend keeps an Idempotency-Key for 24 hours (PROVIDERS.md §C.4). A send whose outcome the
-- `send_email` job never learnt (a timeout, a connection cut after the request went out, a 5xx, a
-- node lost mid-send) may have been accepted; a retry with the same key is safe only while Resend
-- still remembers it. `unknown_since` is when the first such attempt started (the database's
-- clock; set before each send, taken back when Resend answered with a refusal). Once it is older
-- than `email.unknown_outcome_window` (23 h) the job does not send again: the row becomes
-- `unknown`, for an operator to check in Resend whether the email went out and resend it by hand
-- if not.
alter table email_log add column if not exists unknown_since timestamptz;

alter table email_log drop constraint if exists email_log_status_check;
alter table email_log add constraint email_log_status_check
    check (status in ('queued', 'sent', 'failed', 'unknown'));
