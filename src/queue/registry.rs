//! The kinds a node can run: `KIND` -> a type-erased `perform` and the kind's policy.

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::BoxFuture;

use super::enqueue::NewJob;
use super::job::{Job, JobArgs, JobContext, JobError, JobResult, Policy};

type PerformFn<S> =
    Arc<dyn Fn(serde_json::Value, JobContext<S>) -> BoxFuture<'static, JobResult> + Send + Sync>;

/// One registered kind.
pub struct Entry<S> {
    pub policy: Policy,
    perform: PerformFn<S>,
    new_job: fn(serde_json::Value) -> Result<NewJob, String>,
}

impl<S> Entry<S> {
    /// Deserializes the args and runs the kind's `perform`. Args that do not fit the kind are a
    /// permanent error: retrying cannot fix them.
    pub fn perform(
        &self,
        args: serde_json::Value,
        ctx: JobContext<S>,
    ) -> BoxFuture<'static, JobResult> {
        (self.perform)(args, ctx)
    }

    /// Checks `args` against the kind's struct and builds the job with the kind's policy and
    /// unique key, for callers that enqueue by kind name (the API, the CLI). The args are stored
    /// as given (fields the struct ignores are kept, e.g. for searching). Err: why the args do
    /// not fit, in serde's words (naming the field).
    pub fn new_job(&self, args: serde_json::Value) -> Result<NewJob, String> {
        (self.new_job)(args)
    }
}

fn new_job<J: JobArgs>(args: serde_json::Value) -> Result<NewJob, String> {
    let job: J = serde_json::from_value(args.clone()).map_err(|e| e.to_string())?;
    let mut new = NewJob::of(&job).map_err(|e| e.to_string())?;
    new.args = args;
    Ok(new)
}

/// The registered kinds of one node.
pub struct Registry<S> {
    entries: HashMap<&'static str, Entry<S>>,
}

impl<S: Clone + Send + Sync + 'static> Default for Registry<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: Clone + Send + Sync + 'static> Registry<S> {
    /// A registry with the built-in `noop` kind.
    pub fn new() -> Self {
        let mut registry = Registry {
            entries: HashMap::new(),
        };
        registry.register::<Noop>();
        registry
    }

    /// Registers kind `J`. Registering a kind twice keeps the last.
    pub fn register<J: Job<S>>(&mut self) -> &mut Self {
        let perform: PerformFn<S> = Arc::new(|args, ctx| {
            Box::pin(async move {
                let job: J = serde_json::from_value(args).map_err(|e| {
                    JobError::Discard(format!("args do not fit kind `{}`: {e}", J::KIND))
                })?;
                job.perform(ctx).await
            })
        });
        self.entries.insert(
            J::KIND,
            Entry {
                policy: J::policy(),
                perform,
                new_job: new_job::<J>,
            },
        );
        self
    }

    pub fn get(&self, kind: &str) -> Option<&Entry<S>> {
        self.entries.get(kind)
    }

    pub fn kinds(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.entries.keys().copied()
    }

    /// The rate-limit buckets the registered kinds name.
    pub fn rate_limits(&self) -> impl Iterator<Item = (&'static str, &'static str)> + '_ {
        self.entries
            .iter()
            .filter_map(|(kind, e)| e.policy.rate_limit.map(|b| (*kind, b)))
    }
}

/// Completes at once. For smoke tests, benchmarks and operators' checks:
/// `select enqueue_job('noop')`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Noop {
    /// Optional: fail with this message instead of completing (to exercise retries by hand).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail: Option<String>,
}

impl JobArgs for Noop {
    const KIND: &'static str = "noop";
}

impl<S: Send + 'static> Job<S> for Noop {
    async fn perform(self, _ctx: JobContext<S>) -> JobResult {
        match self.fail {
            Some(message) => Err(JobError::retry(message)),
            None => Ok(None),
        }
    }
}
