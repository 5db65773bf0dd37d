//! The TaskQueue contract: `task_queue_contract!(make)` expands to the tests every
//! implementation must pass, where `make` evaluates to `(queue, guard)`.

pub use std::sync::Arc;
pub use std::time::Duration;

pub use ferroflow::{QueuedTask, TaskQueue};

pub fn task(node: &str, attempt: u32, not_before_ms: u64) -> QueuedTask {
    QueuedTask { run_id: "r1".into(), node: node.into(), item: None, attempt, not_before_ms }
}

pub const LEASE: Duration = Duration::from_secs(30);
pub const NO_WAIT: Duration = Duration::ZERO;

macro_rules! task_queue_contract {
    ($make:expr) => {
        #[::tokio::test]
        async fn enqueue_is_idempotent_even_after_ack() {
            let (queue, _guard) = $make;
            queue.enqueue(&[task("a", 1, 0), task("a", 1, 0)]).await.unwrap();
            let leases = queue.lease(10, LEASE, NO_WAIT).await.unwrap();
            assert_eq!(leases.len(), 1);
            queue.ack(&leases[0]).await.unwrap();
            queue.enqueue(&[task("a", 1, 0)]).await.unwrap();
            assert!(queue.lease(10, LEASE, NO_WAIT).await.unwrap().is_empty());
            // Another attempt is another task.
            queue.enqueue(&[task("a", 2, 0)]).await.unwrap();
            assert_eq!(queue.lease(10, LEASE, NO_WAIT).await.unwrap()[0].task.attempt, 2);
        }

        #[::tokio::test]
        async fn a_task_is_leased_to_one_worker_at_a_time() {
            let (queue, _guard) = $make;
            queue.enqueue(&[task("a", 1, 0), task("b", 1, 0)]).await.unwrap();
            let first = queue.lease(1, LEASE, NO_WAIT).await.unwrap();
            let second = queue.lease(10, LEASE, NO_WAIT).await.unwrap();
            assert_eq!(first.len(), 1);
            assert_eq!(second.len(), 1);
            assert_ne!(first[0].task.node, second[0].task.node);
            assert!(queue.lease(10, LEASE, NO_WAIT).await.unwrap().is_empty());
        }

        #[::tokio::test]
        async fn an_expired_lease_is_delivered_again_and_its_ack_fails() {
            let (queue, _guard) = $make;
            queue.enqueue(&[task("a", 1, 0)]).await.unwrap();
            let first = queue.lease(1, Duration::from_millis(30), NO_WAIT).await.unwrap().remove(0);
            assert_eq!(first.deliveries, 1);
            let again = queue.lease(1, LEASE, Duration::from_secs(2)).await.unwrap().remove(0);
            assert_eq!(again.task, first.task);
            assert_eq!(again.deliveries, 2);
            assert!(queue.ack(&first).await.is_err(), "the first worker's lease expired");
            assert!(queue.extend(&first, LEASE).await.is_err());
            queue.ack(&again).await.unwrap();
            assert!(queue.lease(10, LEASE, NO_WAIT).await.unwrap().is_empty(), "nothing is left after the ack");
        }

        #[::tokio::test]
        async fn extending_a_lease_keeps_the_task() {
            let (queue, _guard) = $make;
            queue.enqueue(&[task("a", 1, 0)]).await.unwrap();
            let lease = queue.lease(1, Duration::from_millis(50), NO_WAIT).await.unwrap().remove(0);
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(25)).await;
                queue.extend(&lease, Duration::from_millis(50)).await.unwrap();
            }
            assert!(queue.lease(1, LEASE, NO_WAIT).await.unwrap().is_empty());
            queue.ack(&lease).await.unwrap();
        }

        #[::tokio::test]
        async fn tasks_are_not_handed_out_before_not_before() {
            let (queue, _guard) = $make;
            let later = ferroflow::journal::now_ms() + 80;
            queue.enqueue(&[task("a", 2, later)]).await.unwrap();
            assert!(queue.lease(1, LEASE, NO_WAIT).await.unwrap().is_empty());
            let leases = queue.lease(1, LEASE, Duration::from_secs(2)).await.unwrap();
            assert_eq!(leases.len(), 1);
            assert!(ferroflow::journal::now_ms() >= later);
        }

        #[::tokio::test]
        async fn a_waiting_lease_wakes_on_enqueue_and_times_out_otherwise() {
            let (queue, _guard) = $make;
            let queue = Arc::new(queue);
            let started = std::time::Instant::now();
            assert!(queue.lease(1, LEASE, Duration::from_millis(50)).await.unwrap().is_empty());
            assert!(started.elapsed() >= Duration::from_millis(50));

            let waiter = {
                let queue = Arc::clone(&queue);
                tokio::spawn(async move { queue.lease(1, LEASE, Duration::from_secs(5)).await })
            };
            tokio::time::sleep(Duration::from_millis(20)).await;
            queue.enqueue(&[task("a", 1, 0)]).await.unwrap();
            let leases = tokio::time::timeout(Duration::from_secs(2), waiter).await.unwrap().unwrap().unwrap();
            assert_eq!(leases.len(), 1);
        }
    };
}
