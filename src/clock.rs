//! Time source. Production uses the system clock; the demo runs on a clock set to a
//! fixed instant that then advances with real time, so it behaves the same at any hour.

use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone)]
pub struct Clock(Arc<Inner>);

enum Inner {
    System,
    Offset {
        start: DateTime<Utc>,
        origin: Instant,
    },
}

impl Clock {
    pub fn system() -> Clock {
        Clock(Arc::new(Inner::System))
    }

    /// A clock that reads `start` now and advances with real time.
    pub fn starting_at(start: DateTime<Utc>) -> Clock {
        Clock(Arc::new(Inner::Offset {
            start,
            origin: Instant::now(),
        }))
    }

    pub fn now(&self) -> DateTime<Utc> {
        match &*self.0 {
            Inner::System => Utc::now(),
            Inner::Offset { start, origin } => {
                *start + chrono::Duration::from_std(origin.elapsed()).unwrap_or_default()
            }
        }
    }

    pub fn is_system(&self) -> bool {
        matches!(&*self.0, Inner::System)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}
