//! Every refusal the extension can make, in one place: its SQLSTATE, Twilio's error number and
//! the message. The README's error table is this file.
//!
//! Messages carry Twilio's number as `(Twilio 60390)` so gateways can map it to an HTTP status;
//! DETAIL says what was looked for. Nothing here ever holds a secret or a submitted code: the
//! variants have no field that could carry one.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::PgSqlErrorCode::{self, *};
use totp_core::sid::SidKind;
use totp_core::validate::Invalid;

/// A refusal. Wrong codes are not here: they are results (`pending`, `unverified`).
#[derive(Debug)]
pub enum TotpError {
    /// 20404: no such service.
    ServiceNotFound { sid: String },
    /// 60392 / 60390 / 60391: no such entity / factor / challenge in that service and identity.
    NotFound { kind: SidKind, identity: String, sid: Option<String> },
    /// 60200 (service arguments) or 60306 (verify resources): an argument broke a rule.
    Invalid { twilio: u32, invalid: Invalid },
    /// 60301: `create_entity` for an identity the service already has.
    EntityExists { identity: String },
    /// `create_service` with a caller's SID that names a service with other settings.
    ServiceExists { sid: String, differs: Vec<&'static str> },
    /// 60317: `create_factor` with a caller's SID that the identity already has.
    FactorExists { sid: String, identity: String },
    /// 60315: the entity already has the maximum number of factors.
    TooManyFactors { limit: i32 },
    /// 60326: too many factors created for this entity in 24 hours.
    FactorCreationRateLimited { limit: i32 },
    /// 60310: too many wrong codes while verifying this factor.
    FactorAttemptsExhausted { limit: i32 },
    /// 60308: too many wrong codes on this challenge.
    ChallengeAttemptsExhausted { limit: i32 },
    /// 60312: too many challenges created for this factor in the window.
    ChallengeCreationRateLimited { limit: i32, window: &'static str },
    /// 60318: a challenge needs a verified factor.
    FactorUnverified,
    /// 60322: the challenge was already answered.
    ChallengeResponded { status: String },
    /// 60323: the challenge is past its `expiration_date`.
    ChallengeExpired,
    /// The key file named by `totp_verify.key_file` is missing, unreadable or malformed.
    KeyFileUnavailable { reason: String },
    /// A stored secret does not open with the key its row names: wrong key file, or the
    /// ciphertext was moved from another row or altered.
    SecretUndecryptable { key_id: i64 },
    /// Key management is for superusers, whatever EXECUTE grants say.
    SuperuserRequired { what: &'static str },
    /// On Citus a rotation must name a key that `add_key()` put in every node's key file first.
    RotationNeedsAddedKey,
    /// `rotate_key(key_id => …)` on Citus: some workers' key files lack the key.
    KeyNotOnEveryNode { key_id: i64, nodes: String },
    /// `rotate_key(key_id => …)` names a key that is not an added, not yet current key of the file.
    KeyNotAdded { key_id: i64, state: Option<String> },
    /// On Citus, a node without a current key waits for the coordinator to name one.
    NoCurrentKeyOnNode,
    /// On Citus, key changes are made on the coordinator.
    KeyChangeOnWorker { what: &'static str },
    /// A Citus worker failed a step of a key change.
    WorkerFailed { what: &'static str, nodes: String },
    /// Key changes wait for enrolments and must then see what they committed: READ COMMITTED.
    KeyChangeIsolation { what: &'static str },
    /// The factor used the wrong codes its budget allows in a window, counted in shared memory so
    /// that rolled-back guesses count too (60308 for a verified factor, 60310 while unverified).
    GuessesExhausted { twilio: u32, limit: u32, window: &'static str },
    /// Every shared-memory slot that could count this factor's wrong codes counts a live window.
    GuessSlotsFull,
    /// The library was not preloaded, so rolled-back wrong codes could not be counted.
    GuessLimitsNotLoaded,
    /// Under PL/Proxy: the identity's rows live on another partition (a misrouted call).
    WrongPartition { home: i32, part_no: i32, part_count: i32 },
    /// An identity move needs this database to know its partition.
    NoPartition { what: &'static str },
    /// Something that cannot happen did (an SPI failure): a bug, reported as XX000.
    Internal(String),
}

/// Result alias for the SQL-facing functions: `Err` becomes an ERROR with the right SQLSTATE.
pub type TotpResult<T> = Result<T, TotpError>;

impl TotpError {
    /// An argument error on a verify resource (entity, factor, challenge): Twilio 60306.
    pub fn invalid(invalid: Invalid) -> Self {
        TotpError::Invalid { twilio: 60306, invalid }
    }

    /// An argument error on a service: Twilio 60200.
    pub fn invalid_service(invalid: Invalid) -> Self {
        TotpError::Invalid { twilio: 60200, invalid }
    }

    /// A required argument that was NULL.
    pub fn required(field: &'static str) -> Self {
        TotpError::invalid(Invalid::new(field, "is required"))
    }

    /// Twilio's error number, when there is one.
    pub fn twilio_code(&self) -> Option<u32> {
        Some(match self {
            TotpError::ServiceNotFound { .. } => 20404,
            TotpError::NotFound { kind: SidKind::Entity, .. } => 60392,
            TotpError::NotFound { kind: SidKind::Factor, .. } => 60390,
            TotpError::NotFound { kind: SidKind::Challenge, .. } => 60391,
            TotpError::NotFound { kind: SidKind::Service, .. } => 20404,
            TotpError::Invalid { twilio, .. } => *twilio,
            TotpError::EntityExists { .. } => 60301,
            TotpError::FactorExists { .. } => 60317,
            TotpError::TooManyFactors { .. } => 60315,
            TotpError::FactorCreationRateLimited { .. } => 60326,
            TotpError::FactorAttemptsExhausted { .. } => 60310,
            TotpError::ChallengeAttemptsExhausted { .. } => 60308,
            TotpError::ChallengeCreationRateLimited { .. } => 60312,
            TotpError::FactorUnverified => 60318,
            TotpError::ChallengeResponded { .. } => 60322,
            TotpError::ChallengeExpired => 60323,
            TotpError::GuessesExhausted { twilio, .. } => *twilio,
            // Twilio makes every service SID itself, so it has no number for this conflict.
            TotpError::ServiceExists { .. }
            | TotpError::KeyFileUnavailable { .. }
            | TotpError::SecretUndecryptable { .. }
            | TotpError::SuperuserRequired { .. }
            | TotpError::KeyChangeIsolation { .. }
            | TotpError::RotationNeedsAddedKey
            | TotpError::NoCurrentKeyOnNode
            | TotpError::KeyChangeOnWorker { .. }
            | TotpError::WorkerFailed { .. }
            | TotpError::KeyNotOnEveryNode { .. }
            | TotpError::KeyNotAdded { .. }
            | TotpError::GuessSlotsFull
            | TotpError::GuessLimitsNotLoaded
            | TotpError::WrongPartition { .. }
            | TotpError::NoPartition { .. }
            | TotpError::Internal(_) => return None,
        })
    }

    /// The SQLSTATE, chosen so a caller can branch on the class: P0002 not found, 22023 bad
    /// argument, 23505 duplicate, 54000 a limit (Twilio's HTTP 429s and 60315), 55000 wrong
    /// state, 58P01 key file, XX001 a secret that will not decrypt.
    pub fn sqlstate(&self) -> PgSqlErrorCode {
        match self {
            TotpError::ServiceNotFound { .. } | TotpError::NotFound { .. } => ERRCODE_NO_DATA_FOUND,
            TotpError::Invalid { .. } => ERRCODE_INVALID_PARAMETER_VALUE,
            TotpError::EntityExists { .. } | TotpError::ServiceExists { .. } | TotpError::FactorExists { .. } => {
                ERRCODE_UNIQUE_VIOLATION
            }
            TotpError::TooManyFactors { .. }
            | TotpError::FactorCreationRateLimited { .. }
            | TotpError::FactorAttemptsExhausted { .. }
            | TotpError::ChallengeAttemptsExhausted { .. }
            | TotpError::ChallengeCreationRateLimited { .. }
            | TotpError::GuessesExhausted { .. } => ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            TotpError::GuessSlotsFull => ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
            TotpError::GuessLimitsNotLoaded => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            TotpError::KeyChangeIsolation { .. } => ERRCODE_INVALID_TRANSACTION_STATE,
            TotpError::FactorUnverified | TotpError::ChallengeResponded { .. } | TotpError::ChallengeExpired => {
                ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE
            }
            TotpError::KeyFileUnavailable { .. } | TotpError::KeyNotOnEveryNode { .. } => ERRCODE_UNDEFINED_FILE,
            TotpError::RotationNeedsAddedKey
            | TotpError::KeyNotAdded { .. }
            | TotpError::NoCurrentKeyOnNode
            | TotpError::KeyChangeOnWorker { .. }
            | TotpError::WorkerFailed { .. }
            | TotpError::WrongPartition { .. }
            | TotpError::NoPartition { .. } => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            TotpError::SecretUndecryptable { .. } => ERRCODE_DATA_CORRUPTED,
            TotpError::SuperuserRequired { .. } => ERRCODE_INSUFFICIENT_PRIVILEGE,
            TotpError::Internal(_) => ERRCODE_INTERNAL_ERROR,
        }
    }

    fn message(&self) -> String {
        match self {
            TotpError::ServiceNotFound { .. } => "service not found".into(),
            TotpError::NotFound { kind, .. } => format!("{} not found", kind.noun()),
            TotpError::Invalid { invalid, .. } => format!("invalid {}", invalid.field),
            TotpError::EntityExists { .. } => "entity already exists".into(),
            TotpError::ServiceExists { .. } => "service already exists with other settings".into(),
            TotpError::FactorExists { .. } => "factor already exists".into(),
            TotpError::TooManyFactors { .. } => "entity has the maximum number of factors".into(),
            TotpError::FactorCreationRateLimited { .. } => "too many factors created for this entity".into(),
            TotpError::FactorAttemptsExhausted { .. } => "factor verification attempts limit reached".into(),
            TotpError::ChallengeAttemptsExhausted { .. } => "challenge verification attempts limit reached".into(),
            TotpError::ChallengeCreationRateLimited { .. } => "challenge creation limit reached".into(),
            TotpError::FactorUnverified => "factor is unverified".into(),
            TotpError::ChallengeResponded { .. } => "challenge already responded".into(),
            TotpError::ChallengeExpired => "challenge expired".into(),
            TotpError::KeyFileUnavailable { .. } => "totp_verify key file unavailable".into(),
            TotpError::SecretUndecryptable { .. } => "factor secret cannot be decrypted".into(),
            TotpError::SuperuserRequired { what } => format!("must be superuser to {what}"),
            TotpError::KeyChangeIsolation { what } => format!("must {what} at READ COMMITTED isolation"),
            TotpError::RotationNeedsAddedKey => "a distributed rotation needs a key added first".into(),
            TotpError::KeyNotOnEveryNode { .. } => "the new key is not in every node's key file".into(),
            TotpError::KeyNotAdded { .. } => "no such added key".into(),
            TotpError::NoCurrentKeyOnNode => "this node has no current key yet".into(),
            TotpError::KeyChangeOnWorker { what } => format!("must {what} on the Citus coordinator"),
            TotpError::WorkerFailed { what, .. } => format!("a Citus worker failed to {what}"),
            TotpError::GuessesExhausted { twilio: 60310, .. } => "factor verification attempts limit reached".into(),
            TotpError::GuessesExhausted { .. } => "verification attempts limit reached for this factor".into(),
            TotpError::GuessSlotsFull => "totp_verify.guess_slots exhausted".into(),
            TotpError::GuessLimitsNotLoaded => "totp_verify is not in shared_preload_libraries".into(),
            TotpError::WrongPartition { home, .. } => format!("identity belongs to partition {home}"),
            TotpError::NoPartition { what } => format!("must set this database's partition to {what}"),
            TotpError::Internal(_) => "totp_verify internal error".into(),
        }
    }

    fn detail(&self) -> Option<String> {
        match self {
            TotpError::ServiceNotFound { sid } => Some(format!("No service {sid}.")),
            TotpError::NotFound { kind, identity, sid } => Some(match sid {
                Some(sid) => format!("No {} {sid} for identity \"{identity}\" in this service.", kind.noun()),
                None => format!("No entity with identity \"{identity}\" in this service."),
            }),
            TotpError::Invalid { invalid, .. } => Some(format!("{} {}.", invalid.field, invalid.rule)),
            TotpError::EntityExists { identity } => {
                Some(format!("The service already has an entity with identity \"{identity}\"."))
            }
            TotpError::ServiceExists { sid, differs } => {
                Some(format!("Service {sid} exists with a different {}.", differs.join(", ")))
            }
            TotpError::FactorExists { sid, identity } => {
                Some(format!("Factor {sid} already exists for identity \"{identity}\"."))
            }
            TotpError::TooManyFactors { limit } => Some(format!("The limit is {limit} factors per entity.")),
            TotpError::FactorCreationRateLimited { limit } => {
                Some(format!("The limit is {limit} factor creations per entity per 24 hours."))
            }
            TotpError::FactorAttemptsExhausted { limit } => {
                Some(format!("{limit} wrong codes were submitted for this factor."))
            }
            TotpError::ChallengeAttemptsExhausted { limit } => {
                Some(format!("{limit} wrong codes were submitted for this challenge."))
            }
            TotpError::ChallengeCreationRateLimited { limit, window } => {
                Some(format!("The limit is {limit} challenges per factor per {window}."))
            }
            TotpError::FactorUnverified => Some("Verify the factor with totp.verify_factor first.".into()),
            TotpError::ChallengeResponded { status } => Some(format!("The challenge is {status}.")),
            TotpError::ChallengeExpired => Some("The challenge passed its expiration_date.".into()),
            TotpError::KeyFileUnavailable { reason } => Some(reason.clone()),
            TotpError::SecretUndecryptable { key_id } => Some(format!(
                "The secret is sealed with key {key_id}, which the key file named by totp_verify.key_file \
                 does not hold or which does not match this row."
            )),
            TotpError::SuperuserRequired { .. } => None,
            TotpError::RotationNeedsAddedKey => Some(
                "On Citus every node must hold the new key before it seals anything: SELECT totp.add_key(), copy the \
                 coordinator's key file to every node, then SELECT * FROM totp.rotate_key(key_id => <that id>)."
                    .into(),
            ),
            TotpError::KeyNotOnEveryNode { key_id, nodes } => {
                Some(format!("Key {key_id} is missing from the key file of: {nodes}."))
            }
            TotpError::KeyNotAdded { key_id, state } => Some(match state.as_deref() {
                Some("retired") => format!("Key {key_id} is retired."),
                _ => format!("Key {key_id} is not in this node's key file."),
            }),
            TotpError::NoCurrentKeyOnNode => Some(
                "On Citus the coordinator names each node's current key: run SELECT * FROM totp.distribute() on the \
                 coordinator (again after adding a node)."
                    .into(),
            ),
            TotpError::KeyChangeOnWorker { .. } => None,
            TotpError::WorkerFailed { nodes, .. } => Some(format!("{nodes}.")),
            TotpError::KeyChangeIsolation { .. } => {
                Some("It waits for enrolments in flight and must then see the secrets they committed.".into())
            }
            TotpError::GuessesExhausted { limit, window, .. } => {
                Some(format!("{limit} wrong codes were submitted for this factor in its {window} window."))
            }
            TotpError::GuessSlotsFull => {
                Some("Every slot that counts wrong codes holds a factor whose counting window is still open.".into())
            }
            TotpError::GuessLimitsNotLoaded => Some(
                "Without shared memory, wrong codes in rolled-back transactions would not count toward the limits."
                    .into(),
            ),
            TotpError::WrongPartition { part_no, part_count, .. } => Some(format!(
                "This database is partition {part_no} of {part_count}: route calls by \
                 totp.shard_hash(identity) & ({part_count} - 1), or by the identity's placement after a move."
            )),
            TotpError::NoPartition { .. } => Some("SELECT totp.set_partition(part_no, part_count) first.".into()),
            TotpError::Internal(what) => Some(what.clone()),
        }
    }

    fn hint(&self) -> Option<&'static str> {
        match self {
            TotpError::FactorAttemptsExhausted { .. } => Some("Create a new factor."),
            TotpError::ServiceExists { .. } => Some(
                "The same sid with the same settings returns the service; change settings with totp.update_service.",
            ),
            TotpError::FactorExists { .. } => {
                Some("A factor's secret is returned only when it is created; delete the factor to enrol it again.")
            }
            TotpError::ChallengeAttemptsExhausted { .. } | TotpError::ChallengeExpired => {
                Some("Create a new challenge.")
            }
            TotpError::KeyFileUnavailable { .. } | TotpError::SecretUndecryptable { .. } => {
                Some("Restore the key file the secrets were sealed with (see the README, \"Secrets at rest\").")
            }
            TotpError::GuessSlotsFull => Some("Raise totp_verify.guess_slots (needs a restart)."),
            TotpError::GuessLimitsNotLoaded => Some(
                "Add totp_verify to shared_preload_libraries and restart, or (weaker) have a superuser set \
                 totp_verify.allow_unbounded_rollbacks = on.",
            ),
            _ => None,
        }
    }
}

/// Whether the role calling into the extension is a superuser. Inside a SECURITY DEFINER function
/// the current user is the extension's owner; the outer user is the role the session acts as.
fn caller_is_superuser() -> bool {
    // SAFETY: reads the session's outer user id and its catalog entry.
    unsafe { pgrx::pg_sys::superuser_arg(pgrx::pg_sys::GetOuterUserId()) }
}

impl From<TotpError> for ErrorReport {
    fn from(error: TotpError) -> Self {
        let message = match error.twilio_code() {
            Some(code) => format!("{} (Twilio {code})", error.message()),
            None => error.message(),
        };
        let mut detail = error.detail();
        // Where the key file is and what it holds is for superusers and the server log only.
        if matches!(error, TotpError::KeyFileUnavailable { .. }) && !caller_is_superuser() {
            if let Some(reason) = detail.take() {
                ErrorReport::new(error.sqlstate(), format!("{message}: {reason}"), "totp_verify")
                    .report(pgrx::PgLogLevel::LOG_SERVER_ONLY);
            }
            detail = Some("The server log says why; a superuser sees it here too.".into());
        }
        let mut report = ErrorReport::new(error.sqlstate(), message, "totp_verify");
        if let Some(detail) = detail {
            report = report.set_detail(detail);
        }
        if let Some(hint) = error.hint() {
            report = report.set_hint(hint);
        }
        report
    }
}

impl From<pgrx::spi::SpiError> for TotpError {
    fn from(error: pgrx::spi::SpiError) -> Self {
        TotpError::Internal(format!("SPI: {error}"))
    }
}

impl From<Invalid> for TotpError {
    fn from(invalid: Invalid) -> Self {
        TotpError::invalid(invalid)
    }
}
