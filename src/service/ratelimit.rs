//! Token buckets, so that Roster cannot be used to send mail in bulk: invitations are limited
//! per inviting user (across all their organizations), per organization and per replica, and
//! new organizations per user. The buckets live in each process: with N replicas a user may send
//! up to N times the rate.
//!
//! Only what was done counts: a call takes its sends up front and gives them back unless it
//! succeeds, so a refused invitation (ALREADY_EXISTS, PERMISSION_DENIED, invalid, rolled back)
//! leaves the budget as it was.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::domain::{OrganizationId, UserId};
use crate::error::{Error, ErrorReason};

/// Buckets beyond which full ones are forgotten, to bound memory.
const PRUNE_ABOVE: usize = 10_000;

/// A token bucket per key.
pub struct RateLimiter<K> {
    burst: f64,
    per_second: f64,
    buckets: Mutex<HashMap<K, (f64, Instant)>>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// `burst` at once, then `per_hour` per hour.
    pub fn new(burst: u32, per_hour: u32) -> Self {
        Self {
            burst: f64::from(burst.max(1)),
            per_second: f64::from(per_hour.max(1)) / 3600.0,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one for `key`, or says how long until one is available.
    pub fn try_take(&self, key: &K) -> Result<(), Duration> {
        self.try_take_at(key, Instant::now())
    }

    /// Returns one taken for `key` by a call that then did nothing.
    pub fn give_back(&self, key: &K) {
        self.give_back_at(key, Instant::now());
    }

    fn try_take_at(&self, key: &K, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if buckets.len() > PRUNE_ABOVE {
            let (burst, rate) = (self.burst, self.per_second);
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let tokens = self.refill(buckets.entry(key.clone()).or_insert((self.burst, now)), now);
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / self.per_second))
        }
    }

    fn give_back_at(&self, key: &K, now: Instant) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // A bucket pruned meanwhile was full, and a missing bucket reads as full.
        if let Some(bucket) = buckets.get_mut(key) {
            let tokens = self.refill(bucket, now);
            *tokens = (*tokens + 1.0).min(self.burst);
        }
    }

    fn refill<'a>(&self, bucket: &'a mut (f64, Instant), now: Instant) -> &'a mut f64 {
        let (tokens, at) = bucket;
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * self.per_second)
            .min(self.burst);
        *at = now.max(*at);
        tokens
    }
}

/// Every limit on what one call may cause to be sent or created.
pub struct Limits {
    /// Invitations per inviting user, whatever the organization.
    pub invitations_per_user: RateLimiter<UserId>,
    pub invitations_per_organization: RateLimiter<OrganizationId>,
    /// Invitations of this whole process.
    pub invitations_per_replica: RateLimiter<()>,
    /// New organizations per user.
    pub organizations_per_user: RateLimiter<UserId>,
}

/// Sends or creations taken from some buckets; given back when dropped, unless [`Taken::keep`]
/// says the call did what it counted.
#[must_use = "dropping it gives the budget back"]
pub struct Taken<'a> {
    limits: &'a Limits,
    user: Option<(&'a RateLimiter<UserId>, UserId)>,
    organization: Option<OrganizationId>,
    replica: bool,
}

impl Taken<'_> {
    /// The call succeeded: what it took stays spent.
    pub fn keep(mut self) {
        self.user = None;
        self.organization = None;
        self.replica = false;
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if let Some((limiter, user)) = &self.user {
            limiter.give_back(user);
        }
        if let Some(org) = &self.organization {
            self.limits.invitations_per_organization.give_back(org);
        }
        if self.replica {
            self.limits.invitations_per_replica.give_back(&());
        }
    }
}

fn exhausted(who: &str, wait: Duration) -> Error {
    // Rounded up, so that retrying after the stated wait succeeds.
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    Error::refused(ErrorReason::RateLimited, format!("{who}; retry in {} s", secs.max(1)))
}

impl Limits {
    /// Takes one invitation email for `inviter` in `org`, from the user's, the organization's
    /// and the replica's buckets, or says which is empty and how long to wait.
    pub fn take_invitation(
        &self,
        inviter: &UserId,
        org: OrganizationId,
    ) -> Result<Taken<'_>, Error> {
        let mut taken = Taken { limits: self, user: None, organization: None, replica: false };
        self.invitations_per_user
            .try_take(inviter)
            .map_err(|wait| exhausted("you have sent too many invitations", wait))?;
        taken.user = Some((&self.invitations_per_user, inviter.clone()));
        self.invitations_per_organization
            .try_take(&org)
            .map_err(|wait| exhausted("this organization has sent too many invitations", wait))?;
        taken.organization = Some(org);
        self.invitations_per_replica
            .try_take(&())
            .map_err(|wait| exhausted("this server is sending too many invitations", wait))?;
        taken.replica = true;
        Ok(taken)
    }

    /// Takes one new organization for `founder`.
    pub fn take_organization(&self, founder: &UserId) -> Result<Taken<'_>, Error> {
        self.organizations_per_user
            .try_take(founder)
            .map_err(|wait| exhausted("you have created too many organizations", wait))?;
        Ok(Taken {
            limits: self,
            user: Some((&self.organizations_per_user, founder.clone())),
            organization: None,
            replica: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let limiter = RateLimiter::new(3, 3600);
        let (org, other) = (OrganizationId::generate(), OrganizationId::generate());
        let start = Instant::now();
        for _ in 0..3 {
            assert!(limiter.try_take_at(&org, start).is_ok());
        }
        let wait = limiter.try_take_at(&org, start).unwrap_err();
        assert!(wait <= Duration::from_secs(1) && wait > Duration::from_millis(900), "{wait:?}");
        assert!(limiter.try_take_at(&other, start).is_ok(), "organizations are independent");
        assert!(limiter.try_take_at(&org, start + Duration::from_secs(1)).is_ok());
        assert!(limiter.try_take_at(&org, start + Duration::from_secs(1)).is_err());
    }

    #[test]
    fn what_is_given_back_can_be_taken_again_but_never_beyond_the_burst() {
        let limiter = RateLimiter::new(2, 1);
        let start = Instant::now();
        assert!(limiter.try_take_at(&"a", start).is_ok());
        assert!(limiter.try_take_at(&"a", start).is_ok());
        assert!(limiter.try_take_at(&"a", start).is_err());
        limiter.give_back_at(&"a", start);
        assert!(limiter.try_take_at(&"a", start).is_ok());
        for _ in 0..5 {
            limiter.give_back_at(&"a", start);
        }
        assert!(limiter.try_take_at(&"a", start).is_ok());
        assert!(limiter.try_take_at(&"a", start).is_ok());
        assert!(limiter.try_take_at(&"a", start).is_err(), "the burst caps what is given back");
    }

    fn limits(user: u32, org: u32, replica: u32) -> Limits {
        Limits {
            invitations_per_user: RateLimiter::new(user, 1),
            invitations_per_organization: RateLimiter::new(org, 1),
            invitations_per_replica: RateLimiter::new(replica, 1),
            organizations_per_user: RateLimiter::new(1, 1),
        }
    }

    #[test]
    fn an_invitation_counts_for_its_user_organization_and_replica_unless_given_back() {
        let limits = limits(2, 5, 5);
        let (alice, bob) = (UserId::parse("alice").unwrap(), UserId::parse("bob").unwrap());
        let (org, other) = (OrganizationId::generate(), OrganizationId::generate());
        limits.take_invitation(&alice, org).unwrap().keep();
        limits.take_invitation(&alice, other).unwrap().keep();
        let Err(Error::Refused { reason: ErrorReason::RateLimited, message, .. }) =
            limits.take_invitation(&alice, org)
        else {
            panic!("alice's budget is spent in every organization");
        };
        assert!(message.starts_with("you have sent") && message.contains("retry in"), "{message}");
        // Dropped without keep: given back, so the same call can be made again.
        for _ in 0..10 {
            drop(limits.take_invitation(&bob, org).unwrap());
        }
        limits.take_invitation(&bob, org).unwrap().keep();
        limits.take_invitation(&bob, org).unwrap().keep();
        // The organization has sent 3 of 5; the replica 4 of 5.
        let carol = UserId::parse("carol").unwrap();
        limits.take_invitation(&carol, other).unwrap().keep();
        let Err(Error::Refused { reason: ErrorReason::RateLimited, message, .. }) =
            limits.take_invitation(&carol, other)
        else {
            panic!("the replica's budget is spent");
        };
        assert!(message.starts_with("this server"), "{message}");
    }

    #[test]
    fn an_organization_refusal_gives_the_users_send_back() {
        let limits = limits(3, 1, 10);
        let (alice, org) = (UserId::parse("alice").unwrap(), OrganizationId::generate());
        limits.take_invitation(&alice, org).unwrap().keep();
        for _ in 0..5 {
            let Err(Error::Refused { reason: ErrorReason::RateLimited, message, .. }) =
                limits.take_invitation(&alice, org)
            else {
                panic!("the organization's budget is spent");
            };
            assert!(message.starts_with("this organization"), "{message}");
        }
        // Alice sent one; the refusals cost her nothing.
        limits.take_invitation(&alice, OrganizationId::generate()).unwrap().keep();
        limits.take_invitation(&alice, OrganizationId::generate()).unwrap().keep();
        assert!(limits.take_invitation(&alice, OrganizationId::generate()).is_err());
    }
}
