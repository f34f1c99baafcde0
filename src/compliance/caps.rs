//! The frequency caps that apply to one recipient, for the store's atomic
//! check-and-reserve step (SPEC section 6: the cap check and the recording of the
//! attempt are one step, so several workers cannot exceed a cap together).

use super::{Cap, Engine, Policy, Recipient};
use chrono::{DateTime, Utc};

impl Engine {
    /// The campaign's cap and every applicable state cap (e.g. Fla. Stat.
    /// 501.616(6): 3 per 24h; 10 M.R.S. 1498(3): automated 1 per 8h), as
    /// `(calls, per)`; the strictest wins because each is checked.
    pub fn caps(&self, r: &Recipient, policy: &Policy, now: DateTime<Utc>) -> Vec<Cap> {
        let today = now.date_naive();
        let mut caps: Vec<Cap> = policy.frequency_cap.into_iter().collect();
        for &i in &r.rows {
            let applies = self.row_applies(i, policy, today)
                || today
                    .succ_opt()
                    .is_some_and(|d| self.row_applies(i, policy, d));
            if let (true, Some(c)) = (applies, self.rules[i as usize].cap) {
                if !caps.contains(&c) {
                    caps.push(c);
                }
            }
        }
        caps
    }
}
