//! Safe retries at the edge (AIP-155): a TeamService change that names a `request_id` is made
//! once; a retry gets the first answer, byte for byte, and the same id on another request is
//! refused. The change records its id in its own transaction; the answer is kept right after.

use std::future::Future;
use std::time::Duration;

use prost::Message;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use super::identify;
use crate::domain::ChangeRequestId;
use crate::error::{Error, ErrorReason};
use crate::pb;
use crate::service::{Actor, RequestKey, Services};
use crate::storage::repo::StoredRequest;

/// How long a retry waits for the answer of a first call that is still finishing.
const ANSWER_WAIT: Duration = Duration::from_secs(5);
/// How often it looks meanwhile.
const ANSWER_POLL: Duration = Duration::from_millis(20);

/// A request that may carry a `request_id`.
pub trait Retryable: Message + Sized {
    /// The `request_id` field as sent.
    fn request_id(&self) -> &str;
}

macro_rules! retryable {
    ($($request:ty),* $(,)?) => {$(
        impl Retryable for $request {
            fn request_id(&self) -> &str {
                &self.request_id
            }
        }
    )*};
}

retryable!(
    pb::CreateOrganizationRequest,
    pb::UpdateOrganizationRequest,
    pb::DeleteOrganizationRequest,
    pb::UpdateMemberRoleRequest,
    pb::RemoveMemberRequest,
    pb::LeaveOrganizationRequest,
    pb::TransferOwnershipRequest,
    pb::CreateWorkspaceRequest,
    pb::UpdateWorkspaceRequest,
    pb::DeleteWorkspaceRequest,
    pb::SetWorkspaceAccessRequest,
    pb::CreateInvitationRequest,
    pb::ResendInvitationRequest,
    pb::RevokeInvitationRequest,
    pb::AcceptInvitationRequest,
    pb::BatchCreateInvitationsRequest,
);

/// Identifies the caller, converts the request and runs the change `run`, once per request id
/// when the request names one. `method` is the RPC's name.
pub async fn once<R, C, T, F, Fut>(
    services: &Services,
    method: &'static str,
    mut request: Request<R>,
    run: F,
) -> Result<Response<T>, Status>
where
    R: Retryable,
    C: TryFrom<R, Error = Error>,
    T: Message + Default,
    F: FnOnce(Actor, C) -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let mut actor = identify::actor(&mut request)?;
    let message = request.into_inner();
    if message.request_id().is_empty() {
        let command = C::try_from(message)?;
        return Ok(Response::new(run(actor, command).await?));
    }
    let request_id = ChangeRequestId::parse(message.request_id()).map_err(|e| {
        Error::invalid(
            "request_id",
            format!("{}; make one UUID per change and reuse it only to retry that change", e.0),
        )
    })?;
    let key = RequestKey {
        user_id: actor.user_id.clone(),
        request_id,
        method,
        fingerprint: fingerprint(method, &message),
    };
    if let Some(stored) = services.recall_request(&key).await? {
        return Ok(Response::new(replay(services, &key, stored).await?));
    }
    let command = C::try_from(message)?;
    actor.retry = Some(key.clone());
    match run(actor, command).await {
        Ok(answer) => {
            // The change is made whatever happens here; a retry that finds no answer waits,
            // then says REQUEST_IN_PROGRESS rather than making it again.
            if let Err(err) = services.remember_response(&key, &answer.encode_to_vec()).await {
                tracing::warn!(error = %err, method, "cannot keep the answer of a request id");
            }
            Ok(Response::new(answer))
        }
        // A concurrent call with this id made the change first: its answer is this one's.
        Err(err) if err.reason() == Some(ErrorReason::RequestInProgress) => {
            let stored = services.recall_request(&key).await?.ok_or(err)?;
            Ok(Response::new(replay(services, &key, stored).await?))
        }
        Err(err) => Err(err.into()),
    }
}

/// Runs one item of a batch named by a request id: `key` is the item's own (see
/// [`RequestKey::item`]), none when the batch named no id. An item a cut-off first call
/// already made is answered with its first answer instead of made again.
pub async fn item<T, F, Fut>(
    services: &Services,
    key: Option<RequestKey>,
    run: F,
) -> Result<T, Error>
where
    T: Message + Default,
    F: FnOnce(Option<RequestKey>) -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let Some(key) = key else { return run(None).await };
    if let Some(stored) = services.recall_request(&key).await? {
        return replay(services, &key, stored).await;
    }
    match run(Some(key.clone())).await {
        Ok(answer) => {
            if let Err(err) = services.remember_response(&key, &answer.encode_to_vec()).await {
                tracing::warn!(error = %err, "cannot keep the answer of a batch item");
            }
            Ok(answer)
        }
        Err(err) if err.reason() == Some(ErrorReason::RequestInProgress) => {
            let stored = services.recall_request(&key).await?.ok_or(err)?;
            replay(services, &key, stored).await
        }
        Err(err) => Err(err),
    }
}

/// SHA-256 of the method and the request's encoding (prost encodes a message's fields in one
/// order, so equal requests give equal bytes).
fn fingerprint(method: &str, message: &impl Message) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(method.as_bytes());
    hash.update([0]);
    hash.update(message.encode_to_vec());
    hash.finalize().into()
}

/// The first answer to a request id, once the first call has kept it.
async fn replay<T: Message + Default>(
    services: &Services,
    key: &RequestKey,
    mut stored: StoredRequest,
) -> Result<T, Error> {
    if stored.method != key.method || stored.fingerprint != key.fingerprint {
        return Err(Error::refused(
            ErrorReason::RequestIdReused,
            format!(
                "request_id {} was used for another request ({}); a retry must repeat the \
                 request exactly, and a new request needs a new request_id",
                key.request_id, stored.method
            ),
        )
        .with("method", stored.method));
    }
    let deadline = tokio::time::Instant::now() + ANSWER_WAIT;
    loop {
        if let Some(response) = &stored.response {
            return T::decode(&response[..]).map_err(Error::internal);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(crate::storage::repo::in_progress());
        }
        tokio::time::sleep(ANSWER_POLL).await;
        stored = match services.recall_request(key).await? {
            Some(again) => again,
            // The first call's change did not commit after all: nothing was made.
            None => return Err(crate::storage::repo::in_progress()),
        };
    }
}
