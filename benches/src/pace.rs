//! Open-loop pacing of the concurrent clients: each client calls at a given mean rate, with
//! exponentially distributed gaps (Poisson arrivals, so clients collide as independent tenants
//! do), instead of back to back.
//!
//! Why both: back to back, N processes on a machine of C cores measure the machine's CPU once
//! N > C (every call waits for N/C others' turns on a core, on any transport); paced, they
//! measure what many tenants cost each other while the machine has room, which is what a
//! pool's operator sizes for.
//!
//! Coordinated omission: a call is timed from its scheduled time when the client's own previous
//! call held it past that time (so a slow reply also counts the calls it delayed), and from its
//! real start otherwise (so a late timer wake-up of the client is not blamed on the transport).

use std::time::{Duration, Instant};

pub struct Pacer {
    mean_gap_s: f64,
    next: Instant,
    last_done: Instant,
    rng: u64,
}

impl Pacer {
    /// `rate` calls per second on average; `seed` picks this client's arrival sequence.
    pub fn new(rate: f64, seed: u64) -> Pacer {
        assert!(rate > 0.0, "a paced client needs a positive rate");
        let now = Instant::now();
        let mut p = Pacer { mean_gap_s: 1.0 / rate, next: now, last_done: now, rng: seed | 1 };
        // A random first gap spreads the clients' phases like every later one.
        p.next = now + p.gap();
        p
    }

    /// xorshift64*: enough for arrival times, no dependency for it.
    fn uniform(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let x = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        // (0, 1]: never 0, so ln never sees it.
        ((x >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    fn gap(&mut self) -> Duration {
        Duration::from_secs_f64(-self.uniform().ln() * self.mean_gap_s)
    }

    /// The scheduled time of the next call (then the schedule moves on by one gap).
    pub fn due(&mut self) -> Instant {
        let due = self.next;
        self.next = due + self.gap();
        due
    }

    /// Where to time a call that was due at `due` and starts now: see the module comment.
    pub fn origin(&self, due: Instant) -> Instant {
        if self.last_done > due {
            due
        } else {
            Instant::now()
        }
    }

    /// The call has returned.
    pub fn done(&mut self, at: Instant) {
        self.last_done = at;
    }
}

/// A seed that differs between the client processes started together.
pub fn seed() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    t ^ (u64::from(std::process::id()) << 32) ^ 0x9E37_79B9_7F4A_7C15
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_average_the_rate_and_vary() {
        let mut p = Pacer::new(1000.0, 42);
        let gaps: Vec<f64> = (0..20_000).map(|_| p.gap().as_secs_f64()).collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        assert!((mean - 0.001).abs() < 0.00005, "mean gap {mean}");
        // Exponential: about e^-1 of the gaps are longer than the mean.
        let longer = gaps.iter().filter(|&&g| g > 0.001).count() as f64 / gaps.len() as f64;
        assert!((longer - (-1f64).exp()).abs() < 0.02, "share longer than the mean {longer}");
    }

    #[test]
    fn a_call_held_up_by_the_previous_one_is_timed_from_its_schedule() {
        let mut p = Pacer::new(1000.0, 7);
        let due = p.due();
        // The previous call ended after this one was due: timed from the schedule.
        p.done(due + Duration::from_millis(5));
        assert_eq!(p.origin(due), due);
        // Nothing held it (no call before the first): timed from its real start.
        let mut q = Pacer::new(1000.0, 7);
        let due = q.due();
        let before = Instant::now();
        assert!(q.origin(due) >= before);
    }
}
