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

/// How long after a request id is recorded its answer may still come: the first call is then
/// still finishing.
const ANSWER_WAIT: Duration = Duration::from_secs(5);
/// How often it looks meanwhile.
const ANSWER_POLL: Duration = Duration::from_millis(50);

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

/// An RPC's answer, as kept for retries.
pub trait Answer: Message + Default {
    /// Whether this answer is final, to be given to every retry. Only a batch says no: when an
    /// item failed for a reason that may pass, a retry runs the batch again.
    fn is_final(&self) -> bool {
        true
    }
}

macro_rules! answers {
    ($($response:ty),* $(,)?) => {$(impl Answer for $response {})*};
}

answers!(
    pb::CreateOrganizationResponse,
    pb::UpdateOrganizationResponse,
    pb::DeleteOrganizationResponse,
    pb::UpdateMemberRoleResponse,
    pb::RemoveMemberResponse,
    pb::LeaveOrganizationResponse,
    pb::TransferOwnershipResponse,
    pb::CreateWorkspaceResponse,
    pb::UpdateWorkspaceResponse,
    pb::DeleteWorkspaceResponse,
    pb::SetWorkspaceAccessResponse,
    pb::CreateInvitationResponse,
    pb::ResendInvitationResponse,
    pb::RevokeInvitationResponse,
    pb::AcceptInvitationResponse,
);

impl Answer for pb::BatchCreateInvitationsResponse {
    fn is_final(&self) -> bool {
        use pb::batch_create_invitations_result::Result as Item;
        self.results.iter().all(|r| match &r.result {
            Some(Item::Status(status)) => !may_pass(tonic::Code::from_i32(status.code)),
            _ => true,
        })
    }
}

/// Codes of refusals a retry may not meet again (an outage, a limit, a bug).
fn may_pass(code: tonic::Code) -> bool {
    use tonic::Code;
    matches!(
        code,
        Code::Unavailable
            | Code::ResourceExhausted
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::Internal
            | Code::Unknown
    )
}

/// How a change is made once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Once {
    /// One change, which records its id in its own transaction.
    Change,
    /// A batch of changes, each recording its own derived id: the batch's id is recorded
    /// before its items run, and a retry that finds it without a final answer runs the batch
    /// again (items already made answer as they did).
    Batch,
}

/// Identifies the caller, converts the request and runs the change `run`, once per request id
/// when the request names one. `method` is the RPC's name.
pub async fn once<R, C, T, F, Fut>(
    services: &Services,
    method: &'static str,
    kind: Once,
    mut request: Request<R>,
    run: F,
) -> Result<Response<T>, Status>
where
    R: Retryable,
    C: TryFrom<R, Error = Error>,
    T: Answer,
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
    match services.recall_request(&key).await? {
        Some(stored) if kind == Once::Batch && stored.response.is_none() => {
            check_same(&key, &stored)?;
        }
        Some(stored) => return Ok(Response::new(replay(services, &key, stored).await?)),
        None if kind == Once::Batch => services.record_request(&key).await?,
        None => {}
    }
    let command = C::try_from(message)?;
    actor.retry = Some(key.clone());
    match run(actor, command).await {
        Ok(answer) => {
            // The change is made whatever happens here; a retry that finds no answer waits a
            // few seconds, then says REQUEST_ANSWER_LOST rather than make it again.
            if answer.is_final()
                && let Err(err) = services.remember_response(&key, &answer.encode_to_vec()).await
            {
                tracing::warn!(error = %err, method, "cannot keep the answer of a request id");
            }
            Ok(Response::new(answer))
        }
        // A concurrent call with this id made the change first (or, for a deletion, made the
        // organization vanish): its answer is this one's.
        Err(err) => match services.recall_request(&key).await {
            Ok(Some(stored)) if kind == Once::Change => {
                Ok(Response::new(replay(services, &key, stored).await?))
            }
            _ => Err(err.into()),
        },
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
    T: Answer,
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
        Err(err) => match services.recall_request(&key).await {
            Ok(Some(stored)) => replay(services, &key, stored).await,
            _ => Err(err),
        },
    }
}

/// Refuses a request id used for another request.
fn check_same(key: &RequestKey, stored: &StoredRequest) -> Result<(), Error> {
    if stored.method == key.method && stored.fingerprint == key.fingerprint {
        return Ok(());
    }
    Err(Error::refused(
        ErrorReason::RequestIdReused,
        format!(
            "request_id {} was used for another request ({}); a retry must repeat the request \
             exactly, and a new request needs a new request_id",
            key.request_id, stored.method
        ),
    )
    .with("method", stored.method.clone()))
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

/// The first answer to a request id, once the first call has kept it. A first call that has
/// not kept it within [`ANSWER_WAIT`] of recording the id never will: it was cut off after its
/// commit, and the change stands without an answer to repeat.
async fn replay<T: Answer>(
    services: &Services,
    key: &RequestKey,
    mut stored: StoredRequest,
) -> Result<T, Error> {
    check_same(key, &stored)?;
    let wait = i64::try_from(ANSWER_WAIT.as_micros()).unwrap_or(i64::MAX);
    let lost_at = stored.create_time.as_micros().saturating_add(wait);
    loop {
        if let Some(response) = &stored.response {
            return T::decode(&response[..]).map_err(Error::internal);
        }
        if crate::domain::Timestamp::now().as_micros() >= lost_at {
            return Err(Error::refused(
                ErrorReason::RequestAnswerLost,
                "the change of this request_id was made, but its answer was lost; read the \
                 current state instead of retrying",
            ));
        }
        tokio::time::sleep(ANSWER_POLL).await;
        stored = match services.recall_request(key).await? {
            Some(again) => again,
            // Swept meanwhile: nothing left to answer with.
            None => return Err(crate::storage::repo::in_progress()),
        };
    }
}
