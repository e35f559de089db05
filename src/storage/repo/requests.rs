//! Request ids of TeamService changes (AIP-155): written in the change's own transaction, so a
//! change and the record that it was made commit together; the answer follows once it is built.

use super::facts::statement;
use super::*;
use crate::domain::ChangeRequestId;
use crate::service::RequestKey;

/// What is remembered of a request id.
#[derive(Debug, Clone)]
pub struct StoredRequest {
    /// The RPC it was used for.
    pub method: String,
    /// SHA-256 of the method and the request's encoding.
    pub fingerprint: Vec<u8>,
    /// The encoded answer; none while the first call is still finishing.
    pub response: Option<Vec<u8>>,
    /// When the id was first recorded.
    pub create_time: Timestamp,
}

/// What `user` used `id` for, if anything.
pub async fn find_request(
    db: &impl ConnectionTrait,
    user: &UserId,
    id: ChangeRequestId,
) -> Result<Option<StoredRequest>, Error> {
    let sql = "SELECT method, fingerprint, response, create_time FROM request_ids \
               WHERE user_id = ? AND request_id = ?";
    let values = vec![user.as_str().into(), id.as_uuid().into()];
    let backend = db.get_database_backend();
    let Some(row) = db.query_one_raw(statement(backend, sql, values)).await? else {
        return Ok(None);
    };
    Ok(Some(StoredRequest {
        method: row.try_get("", "method")?,
        fingerprint: row.try_get("", "fingerprint")?,
        response: row.try_get("", "response")?,
        create_time: Timestamp::from_micros(row.try_get("", "create_time")?),
    }))
}

/// The bound values of a row's key columns: user, id, method, fingerprint.
fn key_values(key: &RequestKey) -> Vec<Value> {
    vec![
        key.user_id.as_str().into(),
        key.request_id.as_uuid().into(),
        key.method.into(),
        key.fingerprint.to_vec().into(),
    ]
}

/// Records, in a change's transaction, that the change of `key` is being made. A row already
/// there (a concurrent call with the same id committed first) is REQUEST_IN_PROGRESS, which the
/// edge answers with that call's response.
pub async fn insert_request(
    db: &impl ConnectionTrait,
    key: &RequestKey,
    now: Timestamp,
) -> Result<(), Error> {
    let sql = "INSERT INTO request_ids (user_id, request_id, method, fingerprint, create_time) \
               VALUES (?, ?, ?, ?, ?)";
    let mut values = key_values(key);
    values.push(now.as_micros().into());
    match db.execute_raw(statement(db.get_database_backend(), sql, values)).await {
        Ok(_) => Ok(()),
        Err(err) if violates(&err, Unique::RequestId) => Err(in_progress()),
        Err(err) => Err(err.into()),
    }
}

/// Records `key` unless a row holds it already (a change that made nothing, or a batch before
/// its items); whether this call recorded it.
pub async fn insert_request_if_absent(
    db: &impl ConnectionTrait,
    key: &RequestKey,
    now: Timestamp,
) -> Result<bool, Error> {
    let sql = "INSERT INTO request_ids (user_id, request_id, method, fingerprint, create_time) \
               VALUES (?, ?, ?, ?, ?) ON CONFLICT (user_id, request_id) DO NOTHING";
    let mut values = key_values(key);
    values.push(now.as_micros().into());
    let done = db.execute_raw(statement(db.get_database_backend(), sql, values)).await?;
    Ok(done.rows_affected() == 1)
}

/// The refusal of a call whose request id another call is answering.
pub fn in_progress() -> Error {
    Error::refused(
        ErrorReason::RequestInProgress,
        "a request with this request_id was applied and its answer is not ready yet; retry \
         with the same request_id",
    )
}

/// Keeps the answer to give retries of `key`; a change that wrote no row (one that changed
/// nothing) gets its row here. An answer already kept stays.
pub async fn save_response(
    db: &impl ConnectionTrait,
    key: &RequestKey,
    response: &[u8],
    now: Timestamp,
) -> Result<(), Error> {
    let sql = "INSERT INTO request_ids \
               (user_id, request_id, method, fingerprint, response, create_time) \
               VALUES (?, ?, ?, ?, ?, ?) \
               ON CONFLICT (user_id, request_id) DO UPDATE SET response = excluded.response \
               WHERE request_ids.response IS NULL AND request_ids.fingerprint = excluded.fingerprint";
    let mut values = key_values(key);
    values.extend([response.to_vec().into(), now.as_micros().into()]);
    db.execute_raw(statement(db.get_database_backend(), sql, values)).await?;
    Ok(())
}

/// Forgets request ids made before `before`; returns how many.
pub async fn delete_requests_before(
    db: &impl ConnectionTrait,
    before: Timestamp,
) -> Result<u64, Error> {
    let sql = "DELETE FROM request_ids WHERE create_time < ?";
    let values = vec![before.as_micros().into()];
    let done = db.execute_raw(statement(db.get_database_backend(), sql, values)).await?;
    Ok(done.rows_affected())
}
