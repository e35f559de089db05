//! Per-organization token buckets, so that Roster cannot be used to send mail in bulk. The
//! buckets live in each process: with N replicas an organization may send up to N times the rate.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::domain::OrganizationId;

/// Buckets beyond which full ones are forgotten, to bound memory.
const PRUNE_ABOVE: usize = 10_000;

/// A token bucket per organization.
pub struct RateLimiter {
    burst: f64,
    per_second: f64,
    buckets: Mutex<HashMap<OrganizationId, (f64, Instant)>>,
}

impl RateLimiter {
    /// `burst` sends at once, then `per_hour` per hour.
    pub fn new(burst: u32, per_hour: u32) -> Self {
        Self {
            burst: f64::from(burst.max(1)),
            per_second: f64::from(per_hour.max(1)) / 3600.0,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one send for `org`, or says how long until one is available.
    pub fn try_take(&self, org: OrganizationId) -> Result<(), Duration> {
        self.try_take_at(org, Instant::now())
    }

    fn try_take_at(&self, org: OrganizationId, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if buckets.len() > PRUNE_ABOVE {
            let (burst, rate) = (self.burst, self.per_second);
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = buckets.entry(org).or_insert((self.burst, now));
        *tokens =
            (*tokens + now.duration_since(*at).as_secs_f64() * self.per_second).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / self.per_second))
        }
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
            assert!(limiter.try_take_at(org, start).is_ok());
        }
        let wait = limiter.try_take_at(org, start).unwrap_err();
        assert!(wait <= Duration::from_secs(1) && wait > Duration::from_millis(900), "{wait:?}");
        assert!(limiter.try_take_at(other, start).is_ok(), "organizations are independent");
        assert!(limiter.try_take_at(org, start + Duration::from_secs(1)).is_ok());
        assert!(limiter.try_take_at(org, start + Duration::from_secs(1)).is_err());
    }
}
