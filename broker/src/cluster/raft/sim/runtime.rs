//! openraft's async runtime in the simulation: tokio's, except that the randomness
//! openraft draws (each node's election timeout) comes from the run's seed.

use std::cell::Cell;
use std::future::Future;
use std::time::Duration;

use openraft::{AsyncRuntime, OptionalSend, TokioRuntime};
use rand::SeedableRng;

thread_local! {
    /// The next seed [`SimRuntime::thread_rng`] hands out on this thread.
    static NEXT_SEED: Cell<u64> = const { Cell::new(0) };
}

/// Makes the randomness openraft draws on this thread a function of `seed`.
pub(super) fn seed(seed: u64) {
    NEXT_SEED.with(|s| s.set(seed));
}

#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct SimRuntime;

type Tokio = TokioRuntime;

impl AsyncRuntime for SimRuntime {
    type JoinError = <Tokio as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <Tokio as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <Tokio as AsyncRuntime>::Sleep;
    type Instant = <Tokio as AsyncRuntime>::Instant;
    type TimeoutError = <Tokio as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = <Tokio as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = rand::rngs::StdRng;
    type OneshotSender<T: OptionalSend> = <Tokio as AsyncRuntime>::OneshotSender<T>;
    type OneshotReceiverError = <Tokio as AsyncRuntime>::OneshotReceiverError;
    type OneshotReceiver<T: OptionalSend> = <Tokio as AsyncRuntime>::OneshotReceiver<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        Tokio::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        Tokio::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        Tokio::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        Tokio::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        Tokio::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        Tokio::is_panic(join_error)
    }

    /// A generator seeded from the thread's sequence of seeds: the same run draws the
    /// same numbers in the same order.
    fn thread_rng() -> Self::ThreadLocalRng {
        let seed = NEXT_SEED.with(|s| {
            let seed = s.get();
            s.set(seed.wrapping_add(0x9e37_79b9_7f4a_7c15));
            seed
        });
        rand::rngs::StdRng::seed_from_u64(seed)
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: OptionalSend,
    {
        Tokio::oneshot()
    }
}
