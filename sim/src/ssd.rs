//! A queueing model of an SSD read path, advanced in virtual time.
//!
//! Requests enter a FIFO; up to `channels` are in service at once (the device's internal
//! parallelism). A request in service first waits `latency` (command + flash read time), then
//! transfers its bytes. The transferring requests share the path's bandwidth fairly, each
//! capped by what one request can pull alone:
//!
//! ```text
//! rate per request = min(single_request_bw, peak_bw / requests_transferring)
//! ```
//!
//! So bandwidth grows with request size (latency amortised) and with queue depth (up to
//! `peak / single` requests in parallel), which is what fio curves of real SSDs show.

use std::collections::VecDeque;

/// Parameters of one read path, in SI units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SsdParams {
    /// Bytes/s the path sustains with enough requests in flight.
    pub peak_bps: f64,
    /// Bytes/s one request gets alone.
    pub single_bps: f64,
    /// Per-request latency before data flows, in ns.
    pub latency_ns: f64,
    /// Requests served at once.
    pub channels: usize,
}

impl SsdParams {
    /// A device with no latency and unbounded bandwidth (for tests: I/O takes no time).
    pub fn instant() -> Self {
        Self {
            peak_bps: f64::INFINITY,
            single_bps: f64::INFINITY,
            latency_ns: 0.0,
            channels: usize::MAX,
        }
    }
}

#[derive(Debug, Clone)]
struct Req {
    tag: u64,
    /// Real bytes still to transfer.
    remaining: f64,
    /// End of the latency phase (ns), once in service.
    ready_at: f64,
    issued_at: f64,
}

/// A finished request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Done {
    pub tag: u64,
    pub issued_at: f64,
    pub done_at: f64,
}

/// The simulated device: a FIFO plus requests in service, at virtual time `now` (ns).
#[derive(Debug)]
pub struct SsdSim {
    p: SsdParams,
    now: f64,
    queue: VecDeque<Req>,
    active: Vec<Req>,
    /// Real bytes transferred so far.
    pub bytes_done: f64,
    /// Time with at least one request in service (ns).
    pub busy_ns: f64,
}

const EPS_BYTES: f64 = 1e-6;

impl SsdSim {
    pub fn new(p: SsdParams) -> Self {
        Self {
            p,
            now: 0.0,
            queue: VecDeque::new(),
            active: Vec::new(),
            bytes_done: 0.0,
            busy_ns: 0.0,
        }
    }

    pub fn now(&self) -> f64 {
        self.now
    }

    /// Requests queued or in service.
    pub fn in_flight(&self) -> usize {
        self.queue.len() + self.active.len()
    }

    pub fn is_idle(&self) -> bool {
        self.in_flight() == 0
    }

    /// Queues a read of `bytes` real bytes at the current time.
    pub fn submit(&mut self, tag: u64, bytes: f64) {
        self.queue.push_back(Req {
            tag,
            remaining: bytes.max(0.0),
            ready_at: f64::INFINITY,
            issued_at: self.now,
        });
        self.admit();
    }

    fn admit(&mut self) {
        while self.active.len() < self.p.channels {
            let Some(mut r) = self.queue.pop_front() else {
                break;
            };
            r.ready_at = self.now + self.p.latency_ns;
            self.active.push(r);
        }
    }

    fn transferring(&self) -> usize {
        self.active
            .iter()
            .filter(|r| r.ready_at <= self.now)
            .count()
    }

    /// Bytes/s each transferring request gets now.
    fn rate(&self) -> f64 {
        let n = self.transferring();
        if n == 0 {
            return 0.0;
        }
        self.p.single_bps.min(self.p.peak_bps / n as f64)
    }

    /// Bytes/s the device moves now, as a share of its peak (for memory contention).
    pub fn utilisation(&self) -> f64 {
        let n = self.transferring() as f64;
        if n == 0.0 || !self.p.peak_bps.is_finite() {
            return 0.0;
        }
        (self.rate() * n / self.p.peak_bps).min(1.0)
    }

    /// Bytes so few that moving them takes less time than the clock can resolve at `now`:
    /// such a request counts as done (else the clock could stall on rounding).
    fn negligible(&self, rate: f64) -> f64 {
        let tick_ns = self.now.abs() * 8.0 * f64::EPSILON + 1e-6;
        EPS_BYTES.max(rate * tick_ns / 1e9)
    }

    /// Time of the next completion or phase change, if anything is in service.
    pub fn next_event(&self) -> Option<f64> {
        let rate = self.rate();
        let tiny = self.negligible(rate);
        self.active
            .iter()
            .map(|r| {
                if r.ready_at > self.now {
                    r.ready_at
                } else if r.remaining <= tiny || rate.is_infinite() {
                    self.now
                } else {
                    self.now + r.remaining / rate * 1e9
                }
            })
            .min_by(f64::total_cmp)
    }

    /// Advances to `to` (ns), appending finished requests to `done`. Stops early, at the
    /// time of the first completion, when `stop_at_completion` is set.
    pub fn advance(&mut self, to: f64, stop_at_completion: bool, done: &mut Vec<Done>) {
        loop {
            let next = self.next_event().unwrap_or(f64::INFINITY);
            let t = next.min(to).max(self.now);
            let dt = t - self.now;
            if dt > 0.0 {
                let rate = self.rate();
                for r in self.active.iter_mut().filter(|r| r.ready_at <= self.now) {
                    let moved = (rate * dt / 1e9).min(r.remaining);
                    r.remaining -= moved;
                    self.bytes_done += moved;
                }
                if !self.active.is_empty() {
                    self.busy_ns += dt;
                }
                self.now = t;
            }
            let before = done.len();
            let now = self.now;
            let tiny = self.negligible(self.rate());
            let mut i = 0;
            while i < self.active.len() {
                let r = &self.active[i];
                if r.ready_at <= now && (r.remaining <= tiny || self.p.single_bps.is_infinite()) {
                    self.bytes_done += r.remaining;
                    done.push(Done {
                        tag: r.tag,
                        issued_at: r.issued_at,
                        done_at: now,
                    });
                    self.active.swap_remove(i);
                } else {
                    i += 1;
                }
            }
            self.admit();
            let finished = done.len() > before;
            if self.now >= to || (stop_at_completion && finished) {
                return;
            }
            if self.active.is_empty() {
                if to.is_finite() {
                    self.now = to;
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gbps(x: f64) -> f64 {
        x * 1e9
    }

    #[test]
    fn one_request_takes_latency_plus_transfer() {
        let mut d = SsdSim::new(SsdParams {
            peak_bps: gbps(10.0),
            single_bps: gbps(2.0),
            latency_ns: 1000.0,
            channels: 4,
        });
        d.submit(1, 2e6);
        let mut done = Vec::new();
        d.advance(f64::INFINITY, true, &mut done);
        assert_eq!(done.len(), 1);
        assert!((done[0].done_at - 1_001_000.0).abs() < 1.0);
        assert!((d.bytes_done - 2e6).abs() < 1.0);
    }

    #[test]
    fn parallel_requests_share_the_peak() {
        let mut d = SsdSim::new(SsdParams {
            peak_bps: gbps(4.0),
            single_bps: gbps(2.0),
            latency_ns: 0.0,
            channels: 8,
        });
        for t in 0..4 {
            d.submit(t, 1e6);
        }
        let mut done = Vec::new();
        d.advance(f64::INFINITY, false, &mut done);
        assert_eq!(done.len(), 4);
        // 4 MB at 4 GB/s peak = 1 ms.
        assert!((d.now() - 1e6).abs() < 1.0);
    }
}
