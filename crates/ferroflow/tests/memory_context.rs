//! The in-memory implementations of the context traits against their contracts.

#[macro_use]
mod contract;

mod journal_store {
    use super::contract::journal_store::*;
    use ferroflow::MemoryStore;

    journal_store_contract!((MemoryStore::new(), ()));
}

mod task_queue {
    use super::contract::task_queue::*;
    use ferroflow::MemoryStore;

    task_queue_contract!((MemoryStore::new(), ()));
}

mod durable_store {
    use super::contract::task_queue::*;
    use ferroflow::MemoryStore;

    durable_store_contract!((MemoryStore::new(), ()));
}
