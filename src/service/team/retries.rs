//! Safe retries of TeamService changes (AIP-155): what a request id was used for, and the
//! answer its retries get. The change itself records the id in its own transaction (see
//! `change.rs`); the answer is kept right after, once the edge has built it.

use crate::domain::Timestamp;
use crate::error::Error;
use crate::service::{RequestKey, Services};
use crate::storage::repo::{self, StoredRequest};

impl Services {
    /// What the caller of `key` used its request id for, if anything.
    pub async fn recall_request(&self, key: &RequestKey) -> Result<Option<StoredRequest>, Error> {
        repo::find_request(self.store.reader(), &key.user_id, key.request_id).await
    }

    /// Records `key` before the changes it names are made (a batch's); one already recorded
    /// is left as it is.
    pub async fn record_request(&self, key: &RequestKey) -> Result<(), Error> {
        let tx = self.store.begin_write().await?;
        repo::insert_request_if_absent(&*tx, key, Timestamp::now()).await?;
        tx.commit().await
    }

    /// Keeps the encoded answer retries of `key` get.
    pub async fn remember_response(&self, key: &RequestKey, response: &[u8]) -> Result<(), Error> {
        let tx = self.store.begin_write().await?;
        repo::save_response(&*tx, key, response, Timestamp::now()).await?;
        tx.commit().await
    }

    /// Forgets request ids older than `kept`.
    pub async fn forget_request_ids_older_than(
        &self,
        kept: std::time::Duration,
    ) -> Result<u64, Error> {
        let before = Timestamp::from_micros(
            Timestamp::now().as_micros() - i64::try_from(kept.as_micros()).unwrap_or(i64::MAX),
        );
        let tx = self.store.begin_write().await?;
        let forgotten = repo::delete_requests_before(&*tx, before).await?;
        tx.commit().await?;
        Ok(forgotten)
    }
}
