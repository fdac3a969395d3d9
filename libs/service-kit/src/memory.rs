//! An in-memory map by payment id, shared between handlers and consumers.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use shared_events::PaymentId;

/// Values by payment id. Cheap to clone; clones share the data. Locks are
/// held for a map operation only, never across an `.await`.
#[derive(Debug)]
pub struct ById<T> {
    entries: Arc<RwLock<HashMap<PaymentId, T>>>,
}

impl<T> Default for ById<T> {
    fn default() -> Self {
        Self {
            entries: Arc::default(),
        }
    }
}

impl<T> Clone for ById<T> {
    fn clone(&self) -> Self {
        Self {
            entries: Arc::clone(&self.entries),
        }
    }
}

impl<T: Clone> ById<T> {
    /// Inserts or replaces the value for `id`.
    pub fn upsert(&self, id: PaymentId, value: T) {
        self.entries
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, value);
    }

    pub fn remove(&self, id: PaymentId) {
        self.entries
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }

    pub fn get(&self, id: PaymentId) -> Option<T> {
        self.entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned()
    }

    pub fn contains(&self, id: PaymentId) -> bool {
        self.entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&id)
    }

    pub fn len(&self) -> usize {
        self.entries.read().unwrap_or_else(PoisonError::into_inner).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
