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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_handles_on_one_store_never_lease_the_same_task() {
        let store = Arc::new(MemoryStore::new());
        two_handles_never_lease_the_same_task(Arc::clone(&store), store, 200).await;
    }
}

mod durable_store {
    use super::contract::task_queue::*;
    use ferroflow::MemoryStore;

    durable_store_contract!((MemoryStore::new(), ()));
}
