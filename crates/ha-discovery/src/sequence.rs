//! A cluster-wide, monotonically increasing sequence.

use std::fmt;
use std::sync::Arc;

use ha_core::{KvClient, KvOptions, PutRequest};

use crate::error::Result;

/// Numbers 1, 2, 3, … handed out once each across the group: the version
/// of one key, which every put raises by exactly one. One put per number,
/// no compare-and-swap loop, so contention costs no retries.
///
/// A call whose outcome is unknown (`OutcomeUnknown`) may have used a
/// number: numbers are unique and increasing, not always gapless. Never
/// delete the key (`<name>`): that restarts the sequence at 1.
#[derive(Clone)]
pub struct Sequence {
    client: Arc<dyn KvClient>,
    key: Vec<u8>,
}

impl fmt::Debug for Sequence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sequence")
            .field("key", &String::from_utf8_lossy(&self.key))
            .finish()
    }
}

impl Sequence {
    /// The sequence called `name`.
    pub fn new(client: Arc<dyn KvClient>, name: &str) -> Sequence {
        Sequence {
            client,
            key: name.as_bytes().to_vec(),
        }
    }

    /// The next number: higher than every number returned before, by any
    /// member.
    ///
    /// # Errors
    /// [`crate::RecipeError::Kv`] from the put.
    pub async fn next(&self) -> Result<u64> {
        let request = PutRequest {
            prev_kv: true,
            ..PutRequest::new(self.key.clone(), Vec::new())
        };
        let r = self.client.put(request, KvOptions::default()).await?;
        let before = r.prev_kv.map(|kv| kv.version).unwrap_or(0);
        Ok(u64::try_from(before).unwrap_or(0) + 1)
    }

    /// The last number handed out (0 before the first).
    ///
    /// # Errors
    /// [`crate::RecipeError::Kv`] from the read.
    pub async fn current(&self) -> Result<u64> {
        let kv = self
            .client
            .get(self.key.clone(), KvOptions::default())
            .await?;
        Ok(kv
            .map(|kv| u64::try_from(kv.version).unwrap_or(0))
            .unwrap_or(0))
    }
}
