//! Watch and Snapshot: the change log, streamed.
//!
//! One task per process tails the log (the [`Hub`]): it reads what follows the last position it
//! has read whenever `log_head` moves (this process's commits, other replicas' notifications)
//! and once a second besides, and hands each batch to every live stream at once. A stream that
//! starts behind reads the log itself, page by page at its consumer's pace, until it reaches
//! the hub; then it joins the hub, reading (under the hub's lock) where the hub stands, so that
//! the changes up to there come from the log and those after from the hub: none lost, none
//! twice. Positions have no gaps (see the change log migration), so a stream checks that each
//! change it passes on is the one after the last.
//!
//! Each stream holds at most `buffer` changes that its consumer has not taken yet; a live
//! stream whose consumer falls further behind is ended with the token of the last response it
//! was given, from which the consumer resumes.

use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use sea_orm::{AccessMode, DbBackend, IsolationLevel, TransactionTrait};
use tokio::sync::{Notify, broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::Stream;

use crate::domain::{
    ChangeRecord, ChangeToken, Delta, Grant, LogPosition, Member, OrganizationId, Revision,
    Timestamp, UserId, Workspace, WorkspaceId,
};
use crate::error::{Error, ErrorReason};
use crate::storage::{Store, changelog, repo};

/// How often an idle stream gets a checkpoint: a little under the promised second, so that
/// timer and network delays do not push it over.
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(900);
/// How often the hub reads the log when nothing woke it: in case a notification was lost.
const FALLBACK_POLL: Duration = Duration::from_secs(1);
/// Changes the hub reads at once.
const TAIL_BATCH: u64 = 256;
/// Batches a live stream may be behind the hub before it is cut off. Streams take batches at
/// once (their own buffer is what fills), so this is reached only by a stream starved of CPU.
const RING: usize = 64;
/// Changes a catching-up stream reads from the log at once.
const HISTORY_PAGE: u64 = 500;
/// Most changes in one response.
const MAX_CHANGES_PER_RESPONSE: usize = 100;
/// A response takes no further change once it holds this many deltas.
const MAX_DELTAS_PER_RESPONSE: usize = 1000;
/// Rows retention removes per transaction.
const PRUNE_CHUNK: u64 = 10_000;
/// Rows a snapshot reads per statement.
const SNAPSHOT_READ: u64 = 5_000;
/// Largest snapshot page.
pub const MAX_SNAPSHOT_PAGE: usize = 1000;
/// Calls of the placer a stream's start makes for a change that has no position yet; each
/// places up to 10,000, so only a backlog far beyond anything a placer leaves runs out.
const PLACE_ATTEMPTS: usize = 3;

/// A change's position. Every change read from the log by position has one.
fn at(change: &ChangeRecord) -> LogPosition {
    change.position.unwrap_or_default()
}

/// How Watch streams behave.
#[derive(Debug, Clone)]
pub struct WatchSettings {
    /// Changes a stream may hold for a consumer that has not taken them yet.
    pub buffer: usize,
    /// How long the log keeps a change.
    pub retention: Duration,
}

/// What a Watch stream follows.
#[derive(Debug, Clone, Default)]
pub struct WatchFilter {
    /// Where to start: after this token's position; `None` for now.
    pub start: Option<ChangeToken>,
    /// Only this organization's changes.
    pub organization: Option<OrganizationId>,
    /// Only deltas that may change this user's access.
    pub user: Option<UserId>,
    /// Only deltas that may change access to this workspace.
    pub workspace: Option<WorkspaceId>,
}

impl WatchFilter {
    /// The change with only the deltas that pass; `None` when it is not to be sent. Without a
    /// user or workspace filter every change of the organization is sent, deltas or not, and
    /// shared with every other stream that sends it.
    fn apply(&self, change: &Arc<ChangeRecord>) -> Option<Arc<ChangeRecord>> {
        if self.organization.is_some_and(|org| org != change.organization_id) {
            return None;
        }
        if self.user.is_none() && self.workspace.is_none() {
            return Some(change.clone());
        }
        let passes = |delta: &Delta| {
            self.user.as_ref().is_none_or(|user| delta.touches_user(user))
                && self.workspace.is_none_or(|ws| delta.touches_workspace(ws))
        };
        let deltas: Vec<Delta> = change.deltas.iter().filter(|d| passes(d)).cloned().collect();
        (!deltas.is_empty())
            .then(|| Arc::new(ChangeRecord { deltas, actor: change.actor.clone(), ..**change }))
    }
}

/// One response of a Watch stream: changes (none for a checkpoint) and where to resume.
#[derive(Debug, Clone)]
pub struct Update {
    /// Changes after the previous update's token, in commit order, with the deltas that pass.
    pub changes: Vec<Arc<ChangeRecord>>,
    /// Resume after this update.
    pub token: ChangeToken,
}

/// Why the log cannot serve a start point: retention removed what follows it.
#[derive(Debug, Clone)]
pub struct Pruned {
    /// Changes up to this position are gone; a token at or after it still works.
    pub pruned_through: LogPosition,
    /// When the oldest change still held committed, if the log holds any.
    pub oldest_commit: Option<Timestamp>,
    /// How long the log keeps changes.
    pub retention: Duration,
}

/// Why a Watch or Snapshot call is refused before it streams.
#[derive(Debug)]
pub enum Refused {
    /// Bad input, an unknown organization, or the database.
    Error(Error),
    /// The start token is older than the log.
    Pruned(Pruned),
}

impl From<Error> for Refused {
    fn from(err: Error) -> Self {
        Refused::Error(err)
    }
}

/// Why a stream ended before its consumer left.
#[derive(Debug)]
pub enum Ended {
    /// The consumer did not take what it was sent fast enough.
    FellBehind {
        /// The token of the last response queued for it: it resumes from there.
        last: ChangeToken,
        /// The buffer it overran, in changes.
        buffer: usize,
    },
    /// Retention removed changes the stream had yet to send.
    Pruned(Pruned),
    /// The server is shutting down.
    Stopping {
        /// The token of the last response queued; none for a snapshot.
        last: Option<ChangeToken>,
    },
    /// Reading the log failed.
    Failed {
        /// The token of the last response queued.
        last: ChangeToken,
        error: Error,
    },
}

/// Counters of Watch and Snapshot, for metrics.
#[derive(Debug, Default)]
pub struct WatchStats {
    pub streams: AtomicI64,
    pub changes_sent: AtomicU64,
    /// Streams cut off because their consumer fell behind.
    pub cut_off: AtomicU64,
    /// The last position the hub has read.
    pub tail_position: AtomicU64,
    /// Changes removed by retention.
    pub pruned_through: AtomicU64,
}

/// A batch the hub read: every change at positions `(after, through]`.
#[derive(Debug)]
struct Batch {
    after: LogPosition,
    through: LogPosition,
    changes: Vec<Arc<ChangeRecord>>,
}

/// What the hub has read, and who is listening; under one lock so that a joining stream knows
/// exactly which batches it will receive.
struct Live {
    /// `None` once the server stops.
    sender: Option<broadcast::Sender<Arc<Batch>>>,
    through: LogPosition,
}

/// The process's tail of the change log and its streams.
pub struct Hub {
    store: Store,
    /// Wakes the PostgreSQL placer when a stream joins: while nobody watched, changes waited
    /// for its sweep.
    unplaced: Arc<Notify>,
    settings: WatchSettings,
    live: Mutex<Live>,
    stop: watch::Receiver<bool>,
    stats: Arc<WatchStats>,
}

impl Hub {
    /// Starts tailing the log from its current end, and the retention task. Both stop, and
    /// every stream ends, when `stop` turns true.
    pub async fn start(
        store: Store,
        log_head: Arc<watch::Sender<LogPosition>>,
        unplaced: Arc<Notify>,
        settings: WatchSettings,
        stop: watch::Receiver<bool>,
    ) -> Result<(Arc<Self>, JoinHandle<()>), Error> {
        let (through, pruned) = changelog::head(store.reader()).await?;
        let (sender, _) = broadcast::channel(RING);
        let stats = Arc::new(WatchStats::default());
        stats.tail_position.store(through.0, Ordering::Relaxed);
        stats.pruned_through.store(pruned.0, Ordering::Relaxed);
        let hub = Arc::new(Self {
            store,
            unplaced,
            settings,
            live: Mutex::new(Live { sender: Some(sender), through }),
            stop,
            stats,
        });
        let tail = tokio::spawn(hub.clone().tail(log_head.subscribe()));
        let retention = tokio::spawn(hub.clone().retain());
        let task = tokio::spawn(async move {
            let _ = tail.await;
            let _ = retention.await;
        });
        Ok((hub, task))
    }

    /// Whether any Watch stream of this process follows the hub.
    pub fn watched(&self) -> bool {
        self.live().sender.as_ref().is_some_and(|sender| sender.receiver_count() > 0)
    }

    /// The counters, for metrics.
    pub fn stats(&self) -> Arc<WatchStats> {
        self.stats.clone()
    }

    fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn through(&self) -> LogPosition {
        self.live().through
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Reads what follows the last position read, whenever woken and once a second.
    async fn tail(self: Arc<Self>, mut woken: watch::Receiver<LogPosition>) {
        let mut stop = self.stop.clone();
        let mut failing = false;
        loop {
            let head = *woken.borrow_and_update();
            match self.read_new(head).await {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("watch: reading the change log again");
                }
                Ok(()) => {}
                Err(err) => {
                    if !failing {
                        tracing::warn!(error = %err, "watch: cannot read the change log; retrying");
                    }
                    failing = true;
                }
            }
            tokio::select! {
                changed = woken.changed() => {
                    // The sender lives as long as the use-cases; without it, polling remains.
                    if changed.is_err() {
                        tokio::time::sleep(FALLBACK_POLL).await;
                    }
                }
                _ = tokio::time::sleep(FALLBACK_POLL) => {}
                _ = stopped(&mut stop) => break,
            }
        }
        // Streams drain what they were sent, then end.
        self.live().sender = None;
    }

    /// Reads the log after the hub's mark and broadcasts it; `head` is the end of the log as
    /// this process knows it.
    async fn read_new(&self, head: LogPosition) -> Result<(), Error> {
        {
            // Nobody watches: move the mark to the end without reading. A stream that joins
            // later reads the log up to the mark itself (see `Streamer::follow`); checking and
            // moving under the lock streams subscribe under keeps that exact.
            let mut live = self.live();
            if live.sender.as_ref().is_some_and(|sender| sender.receiver_count() == 0) {
                if head > live.through {
                    live.through = head;
                    self.stats.tail_position.store(head.0, Ordering::Relaxed);
                }
                return Ok(());
            }
        }
        loop {
            let after = self.through();
            let changes = changelog::read_between(
                self.store.reader(),
                after,
                LogPosition(u64::MAX),
                None,
                TAIL_BATCH,
            )
            .await?;
            let Some(last) = changes.last() else { return Ok(()) };
            let through = at(last);
            let full = changes.len() as u64 == TAIL_BATCH;
            // A gap (only retention makes one) is passed on: streams that reach it end, and
            // their consumers learn on resuming how far back the log goes.
            let after = LogPosition(at(&changes[0]).0.saturating_sub(1)).max(after);
            let changes = changes.into_iter().map(Arc::new).collect();
            let batch = Arc::new(Batch { after, through, changes });
            {
                let mut live = self.live();
                live.through = through;
                if let Some(sender) = &live.sender {
                    // No receiver is no error: nobody watches.
                    let _ = sender.send(batch);
                }
            }
            self.stats.tail_position.store(through.0, Ordering::Relaxed);
            if !full {
                return Ok(());
            }
        }
    }

    /// Removes changes older than the retention, now and then.
    async fn retain(self: Arc<Self>) {
        let mut stop = self.stop.clone();
        let every =
            (self.settings.retention / 2).clamp(Duration::from_secs(1), Duration::from_secs(300));
        loop {
            let retention = i64::try_from(self.settings.retention.as_micros()).unwrap_or(i64::MAX);
            let cutoff =
                Timestamp::from_micros(Timestamp::now().as_micros().saturating_sub(retention));
            match changelog::prune(&self.store, cutoff, PRUNE_CHUNK).await {
                Ok(Some(pruned)) => {
                    self.stats.pruned_through.store(pruned.0, Ordering::Relaxed);
                    tracing::info!(
                        pruned_through = pruned.0,
                        "watch: old changes removed from the change log"
                    );
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "watch: retention could not remove old changes")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stopped(&mut stop) => return,
            }
        }
    }

    async fn pruned(&self, pruned_through: LogPosition) -> Pruned {
        let oldest = changelog::oldest(self.store.reader()).await.ok().flatten();
        Pruned {
            pruned_through,
            oldest_commit: oldest.map(|(_, time)| time),
            retention: self.settings.retention,
        }
    }

    /// Starts a Watch stream.
    pub async fn watch(self: &Arc<Self>, filter: WatchFilter) -> Result<Outlet<Update>, Refused> {
        if let (Some(token), Some(org)) = (filter.start, filter.organization)
            && token.organization.is_some_and(|(named, _)| named != org)
        {
            return Err(Error::invalid(
                "start_token",
                "belongs to another organization than organization_id",
            )
            .into());
        }
        let db = self.store.reader();
        // A token without a position stands for its organization's revision: where that
        // change is in the log (placing it first if it has no position yet).
        let start = match filter.start {
            Some(token) => Some((self.position_of(token).await?, token.organization)),
            None => None,
        };
        let (head, pruned) = changelog::head(db).await?;
        let cursor = match (start, filter.organization) {
            (Some((position, _)), _) if position > head => {
                return Err(Error::invalid(
                    "start_token",
                    "names a point after the end of the change log: it was not issued by this \
                     deployment",
                )
                .into());
            }
            (Some((position, _)), _) if position < pruned => {
                return Err(Refused::Pruned(self.pruned(pruned).await));
            }
            (Some((position, _)), None) => Cursor { position, organization: None },
            (Some((position, named)), Some(org)) => {
                let revision = match named {
                    Some((_, revision)) => revision,
                    None => changelog::revision_at(db, org, position).await?.unwrap_or_default(),
                };
                Cursor { position, organization: Some((org, revision)) }
            }
            (None, None) => Cursor { position: head, organization: None },
            (None, Some(org)) => match self.latest_placed(org).await? {
                // Its latest change may have been placed after `head` was read: then the
                // stream starts after it (other organizations' changes in between are not
                // this stream's). Any later change of it is placed after `head`.
                Some((revision, position)) => {
                    Cursor { position: position.max(head), organization: Some((org, revision)) }
                }
                None => Cursor { position: head, organization: Some((org, Revision(0))) },
            },
        };
        let (outlet, inlet) = outlet(self.stats.clone());
        let stream = Streamer {
            hub: self.clone(),
            filter,
            delivered: cursor.token(),
            cursor,
            inlet,
            last_sent: Instant::now(),
        };
        tokio::spawn(stream.run());
        Ok(outlet)
    }

    /// Where `token` points in the log. A token without a position names a change by its
    /// organization and revision; one that has no position yet is placed first.
    async fn position_of(&self, token: ChangeToken) -> Result<LogPosition, Refused> {
        if let Some(position) = token.position {
            return Ok(position);
        }
        let Some((org, revision)) = token.organization else {
            return Err(Error::invalid("start_token", "names no point of the change log").into());
        };
        if revision.0 == 0 {
            return Ok(LogPosition(0));
        }
        let db = self.store.reader();
        for _ in 0..PLACE_ATTEMPTS {
            match changelog::position_of_revision(db, org, revision).await? {
                Some(Some(position)) => return Ok(position),
                Some(None) => {
                    changelog::place(db).await?;
                }
                None => {
                    let latest = changelog::latest(db, org).await?;
                    if latest.is_some_and(|(current, _)| current < revision) {
                        return Err(Error::invalid(
                            "start_token",
                            "names a revision the organization has not reached: it was not \
                             issued by this deployment",
                        )
                        .into());
                    }
                    // Retention removed it.
                    let (_, pruned) = changelog::head(db).await?;
                    return Err(Refused::Pruned(self.pruned(pruned).await));
                }
            }
        }
        Err(Error::refused(
            ErrorReason::ChangeLogBehind,
            "the change log is placing a backlog of changes; retry",
        )
        .into())
    }

    /// The organization's latest revision and its change's position, placing that change
    /// first if it has no position yet; `None` when the organization does not exist.
    async fn latest_placed(
        &self,
        org: OrganizationId,
    ) -> Result<Option<(Revision, LogPosition)>, Error> {
        let db = self.store.reader();
        for _ in 0..PLACE_ATTEMPTS {
            match changelog::latest(db, org).await? {
                None => return Ok(None),
                Some((revision, Some(position))) => return Ok(Some((revision, position))),
                Some((_, None)) => {
                    changelog::place(db).await?;
                }
            }
        }
        Err(Error::refused(
            ErrorReason::ChangeLogBehind,
            "the change log is placing a backlog of changes; retry",
        ))
    }

    /// Starts a Snapshot stream: the organization as of one revision, read in one transaction,
    /// in pages of `page_size` items.
    pub async fn snapshot(
        self: &Arc<Self>,
        org: OrganizationId,
        page_size: usize,
    ) -> Result<Outlet<SnapshotPage>, Refused> {
        let state = self.read_snapshot(org).await?;
        let (outlet, mut inlet) = outlet(self.stats.clone());
        let mut stop = self.stop.clone();
        tokio::spawn(async move {
            let pages = state.into_pages(page_size.clamp(1, MAX_SNAPSHOT_PAGE));
            for page in pages {
                let weight = page.items();
                tokio::select! {
                    biased;
                    _ = stopped(&mut stop) => {
                        inlet.end(Ended::Stopping { last: None });
                        return;
                    }
                    sent = inlet.send_paced(page, weight, 4 * MAX_SNAPSHOT_PAGE) => if !sent {
                        return;
                    },
                }
            }
        });
        Ok(outlet)
    }

    async fn read_snapshot(&self, org: OrganizationId) -> Result<SnapshotState, Error> {
        for _ in 0..PLACE_ATTEMPTS {
            match self.read_snapshot_once(org).await? {
                Some(state) => return Ok(state),
                // Its latest change has no position yet. Once it has one, it is within the
                // view's head, so a Watch from the snapshot's token does not send it again.
                None => {
                    changelog::place(self.store.reader()).await?;
                }
            }
        }
        Err(Error::refused(
            ErrorReason::ChangeLogBehind,
            "the change log is placing a backlog of changes; retry",
        ))
    }

    /// One attempt of [`Hub::read_snapshot`]: `None` when the organization's latest change has
    /// no position yet.
    async fn read_snapshot_once(
        &self,
        org: OrganizationId,
    ) -> Result<Option<SnapshotState>, Error> {
        let db = self.store.reader();
        // One consistent view: REPEATABLE READ on PostgreSQL; on SQLite a read transaction sees
        // the database as of its first read until it ends.
        let tx = match db.get_database_backend() {
            DbBackend::Postgres => {
                db.begin_with_config(
                    Some(IsolationLevel::RepeatableRead),
                    Some(AccessMode::ReadOnly),
                )
                .await?
            }
            _ => db.begin().await?,
        };
        let Some((revision, position)) = changelog::latest(&tx, org).await? else {
            return Err(Error::NotFound("organization"));
        };
        if position.is_none() {
            tx.rollback().await?;
            return Ok(None);
        }
        // Every change in this view is at or before the head it shows, and every later one
        // after it: Watch from here misses nothing and repeats nothing.
        let (head, _) = changelog::head(&tx).await?;
        let mut members: Vec<Member> = Vec::new();
        loop {
            let after = members.last().map(|m| m.user_id.as_str().to_owned());
            let page = repo::list_members(&tx, org, after.as_deref(), SNAPSHOT_READ).await?;
            let done = (page.len() as u64) < SNAPSHOT_READ;
            members.extend(page);
            if done {
                break;
            }
        }
        let mut workspaces: Vec<Workspace> = Vec::new();
        loop {
            let after = workspaces.last().map(|w| w.id);
            let page = repo::list_workspaces(&tx, org, None, after, SNAPSHOT_READ).await?;
            let done = (page.len() as u64) < SNAPSHOT_READ;
            workspaces.extend(page);
            if done {
                break;
            }
        }
        let mut grants: Vec<Grant> = Vec::new();
        loop {
            let after = grants.last().map(|g| (g.workspace_id, g.user_id.as_str().to_owned()));
            let page = repo::list_grants(&tx, org, None, None, after, SNAPSHOT_READ).await?;
            let done = (page.len() as u64) < SNAPSHOT_READ;
            grants.extend(page);
            if done {
                break;
            }
        }
        // Read only: nothing to keep.
        tx.rollback().await?;
        Ok(Some(SnapshotState {
            members,
            workspaces,
            grants,
            revision,
            token: ChangeToken { organization: Some((org, revision)), position: Some(head) },
        }))
    }
}

/// An organization as one snapshot read it.
struct SnapshotState {
    members: Vec<Member>,
    workspaces: Vec<Workspace>,
    grants: Vec<Grant>,
    revision: Revision,
    token: ChangeToken,
}

/// One response of a Snapshot stream.
#[derive(Debug, Clone, Default)]
pub struct SnapshotPage {
    /// Members, in user id order, until all have been sent.
    pub members: Vec<Member>,
    /// Workspaces, in creation order, once every member has been sent.
    pub workspaces: Vec<Workspace>,
    /// Grants, by workspace and user, once every workspace has been sent.
    pub grants: Vec<Grant>,
    /// On the last page: the revision shown and its token.
    pub end: Option<(Revision, ChangeToken)>,
}

impl SnapshotPage {
    fn items(&self) -> usize {
        self.members.len() + self.workspaces.len() + self.grants.len()
    }
}

impl SnapshotState {
    fn into_pages(self, size: usize) -> Vec<SnapshotPage> {
        let mut pages = vec![SnapshotPage::default()];
        let room = |pages: &mut Vec<SnapshotPage>| {
            if pages.last().is_none_or(|page| page.items() >= size) {
                pages.push(SnapshotPage::default());
            }
            pages.len() - 1
        };
        for member in self.members {
            let at = room(&mut pages);
            pages[at].members.push(member);
        }
        for workspace in self.workspaces {
            let at = room(&mut pages);
            pages[at].workspaces.push(workspace);
        }
        for grant in self.grants {
            let at = room(&mut pages);
            pages[at].grants.push(grant);
        }
        if let Some(last) = pages.last_mut() {
            last.end = Some((self.revision, self.token));
        }
        pages
    }
}

/// Where a stream stands: everything up to `position` has been considered, and for a stream
/// of one organization, that organization's revision there.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    position: LogPosition,
    organization: Option<(OrganizationId, Revision)>,
}

impl Cursor {
    fn token(&self) -> ChangeToken {
        ChangeToken { organization: self.organization, position: Some(self.position) }
    }

    /// Moves past one change.
    fn pass(&mut self, change: &ChangeRecord) {
        self.position = at(change);
        if let Some((org, revision)) = &mut self.organization
            && *org == change.organization_id
        {
            *revision = change.revision;
        }
    }
}

/// Completes once the server stops (or can no longer say that it runs).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// How a step of a stream ended it.
type Step = Result<(), Option<Ended>>;

/// One Watch stream's task.
struct Streamer {
    hub: Arc<Hub>,
    filter: WatchFilter,
    cursor: Cursor,
    /// The token of the last update queued.
    delivered: ChangeToken,
    inlet: Inlet<Update>,
    last_sent: Instant,
}

impl Streamer {
    async fn run(mut self) {
        let ended = match self.follow().await {
            Ok(()) | Err(None) => None,
            Err(Some(ended)) => Some(ended),
        };
        if let Some(ended) = ended {
            if matches!(ended, Ended::FellBehind { .. }) {
                self.hub.stats.cut_off.fetch_add(1, Ordering::Relaxed);
            }
            self.inlet.end(ended);
        }
    }

    /// Catches up from the log, joins the hub, and follows it; returns when the stream ends
    /// (`Err(None)`: its consumer left).
    async fn follow(&mut self) -> Step {
        // Catching up at the consumer's pace, without holding the hub's batches meanwhile.
        loop {
            let target = self.hub.through();
            if self.cursor.position >= target {
                break;
            }
            self.read_history(target).await?;
        }
        let joined = {
            let live = self.hub.live();
            live.sender.as_ref().map(|sender| (sender.subscribe(), live.through))
        };
        let Some((mut batches, joined_at)) = joined else {
            return Err(Some(self.stopping()));
        };
        self.hub.unplaced.notify_one();
        // What the hub read before this stream joined comes from the log; what follows, from
        // the hub.
        self.read_history(joined_at).await?;
        let mut stop = self.hub.stop.clone();
        loop {
            let checkpoint = self.last_sent + CHECKPOINT_EVERY;
            tokio::select! {
                biased;
                _ = stopped(&mut stop) => return Err(Some(self.stopping())),
                _ = self.inlet.closed() => return Err(None),
                batch = batches.recv() => match batch {
                    Ok(batch) if batch.through <= self.cursor.position => {}
                    // Only retention makes gaps.
                    Ok(batch) if batch.after > self.cursor.position => {
                        return Err(Some(self.gap(self.cursor.position).await));
                    }
                    Ok(batch) => self.take_batch(&batch)?,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        return Err(Some(self.fell_behind()));
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        return Err(Some(self.stopping()));
                    }
                },
                _ = tokio::time::sleep_until(checkpoint) => self.checkpoint(),
            }
        }
    }

    fn stopping(&self) -> Ended {
        Ended::Stopping { last: Some(self.delivered) }
    }

    fn fell_behind(&self) -> Ended {
        Ended::FellBehind { last: self.delivered, buffer: self.hub.settings.buffer }
    }

    fn failed(&self, error: Error) -> Ended {
        Ended::Failed { last: self.delivered, error }
    }

    /// Sends the log's changes up to `target`, waiting for the consumer as it goes.
    async fn read_history(&mut self, target: LogPosition) -> Step {
        let hub = self.hub.clone();
        let db = hub.store.reader();
        while self.cursor.position < target {
            if self.hub.stopping() {
                return Err(Some(self.stopping()));
            }
            let from = self.cursor.position;
            let page =
                changelog::read_between(db, from, target, self.filter.organization, HISTORY_PAGE)
                    .await
                    .map_err(|err| Some(self.failed(err)))?;
            let complete = (page.len() as u64) < HISTORY_PAGE;
            match self.filter.organization {
                // Every position is there unless retention removed some.
                None => {
                    let dense = page.iter().zip(from.0 + 1..).all(|(c, p)| at(c).0 == p);
                    let reached = page.last().map_or(from, at);
                    if !dense || (complete && reached != target) {
                        return Err(Some(self.gap(from).await));
                    }
                }
                // Other organizations' changes are not read: retention tells instead.
                Some(_) => {
                    let (_, pruned) =
                        changelog::head(db).await.map_err(|err| Some(self.failed(err)))?;
                    if pruned > from {
                        return Err(Some(self.gap(from).await));
                    }
                }
            }
            let end = if complete { target } else { page.last().map_or(target, at) };
            let page: Vec<Arc<ChangeRecord>> = page.into_iter().map(Arc::new).collect();
            let updates = self.collect(&page, end);
            let quiet = updates.is_empty();
            for update in updates {
                self.send_paced(update).await?;
            }
            // A long catch-up that sends nothing still tells the consumer how far it got.
            if quiet && self.last_sent.elapsed() >= CHECKPOINT_EVERY {
                self.checkpoint();
            }
        }
        Ok(())
    }

    /// Explains a gap after `from`: retention, or else a log that breaks its own rule.
    async fn gap(&self, from: LogPosition) -> Ended {
        match changelog::head(self.hub.store.reader()).await {
            Ok((_, pruned)) if pruned > from => Ended::Pruned(self.hub.pruned(pruned).await),
            Ok(_) => self.failed(Error::internal(anyhow::anyhow!(
                "the change log skips a position after {}",
                from.0
            ))),
            Err(err) => self.failed(err),
        }
    }

    /// Moves the cursor past `changes` (in order, each after it) and then to `end`, and returns
    /// the updates that carry what passes the filter.
    fn collect(&mut self, changes: &[Arc<ChangeRecord>], end: LogPosition) -> Vec<Update> {
        let mut updates = Vec::new();
        let mut pending: Vec<Arc<ChangeRecord>> = Vec::new();
        let mut deltas = 0;
        for change in changes {
            self.cursor.pass(change);
            if let Some(passed) = self.filter.apply(change) {
                deltas += passed.deltas.len();
                pending.push(passed);
            }
            if pending.len() >= MAX_CHANGES_PER_RESPONSE || deltas >= MAX_DELTAS_PER_RESPONSE {
                let changes = std::mem::take(&mut pending);
                updates.push(Update { changes, token: self.cursor.token() });
                deltas = 0;
            }
        }
        self.cursor.position = self.cursor.position.max(end);
        if !pending.is_empty() {
            updates.push(Update { changes: pending, token: self.cursor.token() });
        }
        updates
    }

    /// Queues an update once the consumer's buffer has room for it.
    async fn send_paced(&mut self, update: Update) -> Step {
        let (count, token) = (update.changes.len(), update.token);
        let mut stop = self.hub.stop.clone();
        tokio::select! {
            biased;
            _ = stopped(&mut stop) => return Err(Some(self.stopping())),
            sent = self.inlet.send_paced(update, count, self.hub.settings.buffer) => if !sent {
                return Err(None);
            },
        }
        self.sent(count, token);
        Ok(())
    }

    /// Queues an update at once; a consumer whose buffer is full is cut off.
    fn send_now(&mut self, update: Update) -> Step {
        let (count, token) = (update.changes.len(), update.token);
        if !self.inlet.try_send(update, count, self.hub.settings.buffer)? {
            return Err(Some(self.fell_behind()));
        }
        self.sent(count, token);
        Ok(())
    }

    fn sent(&mut self, changes: usize, token: ChangeToken) {
        self.hub.stats.changes_sent.fetch_add(changes as u64, Ordering::Relaxed);
        self.delivered = token;
        self.last_sent = Instant::now();
    }

    /// Passes on a batch of the hub, which starts at or before the cursor.
    fn take_batch(&mut self, batch: &Batch) -> Step {
        let from = self.cursor.position;
        let fresh: Vec<Arc<ChangeRecord>> =
            batch.changes.iter().filter(|c| at(c) > from).cloned().collect();
        for update in self.collect(&fresh, batch.through) {
            self.send_now(update)?;
        }
        Ok(())
    }

    /// A response without changes, when the consumer has taken everything sent.
    fn checkpoint(&mut self) {
        let token = self.cursor.token();
        if self.inlet.is_drained()
            && matches!(
                self.inlet.try_send(Update { changes: Vec::new(), token }, 0, usize::MAX),
                Ok(true)
            )
        {
            self.delivered = token;
        }
        self.last_sent = Instant::now();
    }
}

/// What a stream's consumer has not taken yet.
#[derive(Debug, Default)]
struct Backlog {
    /// Changes (or snapshot items) queued.
    weight: AtomicUsize,
    responses: AtomicUsize,
    /// Signalled whenever the consumer takes a response.
    taken: Notify,
}

/// The producing end of a stream.
struct Inlet<T> {
    items: mpsc::UnboundedSender<(T, usize)>,
    ended: Option<oneshot::Sender<Ended>>,
    backlog: Arc<Backlog>,
}

/// The consuming end of a stream: its items, then why it ended, if it did not simply finish.
pub struct Outlet<T> {
    items: mpsc::UnboundedReceiver<(T, usize)>,
    ended: Option<oneshot::Receiver<Ended>>,
    backlog: Arc<Backlog>,
    stats: Arc<WatchStats>,
}

fn outlet<T>(stats: Arc<WatchStats>) -> (Outlet<T>, Inlet<T>) {
    let (items_tx, items_rx) = mpsc::unbounded_channel();
    let (ended_tx, ended_rx) = oneshot::channel();
    let backlog = Arc::new(Backlog::default());
    stats.streams.fetch_add(1, Ordering::Relaxed);
    (
        Outlet { items: items_rx, ended: Some(ended_rx), backlog: backlog.clone(), stats },
        Inlet { items: items_tx, ended: Some(ended_tx), backlog },
    )
}

impl<T> Inlet<T> {
    /// Queues an item of `weight` if the backlog has room for it within `limit`; an item
    /// larger than the limit goes alone into an empty backlog. `Err(None)`: the consumer left.
    fn try_send(&self, item: T, weight: usize, limit: usize) -> Result<bool, Option<Ended>> {
        let held = self.backlog.weight.load(Ordering::Acquire);
        if held > 0 && held.saturating_add(weight) > limit {
            return Ok(false);
        }
        self.backlog.weight.fetch_add(weight, Ordering::AcqRel);
        self.backlog.responses.fetch_add(1, Ordering::AcqRel);
        if self.items.send((item, weight)).is_err() {
            return Err(None);
        }
        Ok(true)
    }

    /// Queues an item, first waiting until the backlog has room; false if the consumer left.
    async fn send_paced(&self, item: T, weight: usize, limit: usize) -> bool {
        let mut item = Some(item);
        loop {
            let taken = self.backlog.taken.notified();
            if let Some(next) = item.take() {
                let held = self.backlog.weight.load(Ordering::Acquire);
                if held == 0 || held.saturating_add(weight) <= limit {
                    return self.try_send(next, weight, usize::MAX).is_ok();
                }
                item = Some(next);
            }
            tokio::select! {
                _ = taken => {}
                _ = self.items.closed() => return false,
            }
        }
    }

    /// Whether the consumer has taken everything queued.
    fn is_drained(&self) -> bool {
        self.backlog.responses.load(Ordering::Acquire) == 0
    }

    /// Completes when the consumer has gone.
    async fn closed(&self) {
        self.items.closed().await;
    }

    /// Ends the stream with a reason, delivered after everything queued.
    fn end(&mut self, ended: Ended) {
        if let Some(sender) = self.ended.take() {
            let _ = sender.send(ended);
        }
    }
}

impl<T> Stream for Outlet<T> {
    type Item = Result<T, Ended>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match this.items.poll_recv(cx) {
            Poll::Ready(Some((item, weight))) => {
                this.backlog.weight.fetch_sub(weight, Ordering::AcqRel);
                this.backlog.responses.fetch_sub(1, Ordering::AcqRel);
                this.backlog.taken.notify_one();
                return Poll::Ready(Some(Ok(item)));
            }
            Poll::Ready(None) => {}
            Poll::Pending => return Poll::Pending,
        }
        // Every item has been taken and the producer is gone: why, if it said.
        let Some(ended) = this.ended.as_mut() else { return Poll::Ready(None) };
        match Pin::new(ended).poll(cx) {
            Poll::Ready(reason) => {
                this.ended = None;
                Poll::Ready(reason.ok().map(Err))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T> Drop for Outlet<T> {
    fn drop(&mut self) {
        self.stats.streams.fetch_sub(1, Ordering::Relaxed);
    }
}
