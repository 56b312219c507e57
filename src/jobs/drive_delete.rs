//! `drive_delete`: deletes a document's file from Google Drive, then the document's row (and any
//! staged chunks). A 404 from Drive counts as done: the file is gone either way, so a retry
//! after a lost answer is harmless.
//!
//! The file is the one named by `drive_file_id` (in the args, or on the row). A document whose
//! upload never recorded a file id is looked up by its `appProperties` key, in case an upload
//! created it before dying. Rate limits snooze with the Drive jobs' doubling wait (counted on
//! the document while its row is there, see `drive_upload::throttled`), 5xx and cut connections
//! retry, other 4xx discard (classified in `integrations::drive::error`).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use super::AppState;
use super::drive_upload::{APP_PROPERTY, drive_client, forget_throttles, throttled};
use crate::integrations::drive::DriveError;
use crate::queue::{Job, JobArgs, JobContext, JobError, JobResult, Policy};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveDelete {
    /// The document whose file goes; its row is deleted afterwards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document_id: Option<Uuid>,
    /// A file to delete when the row is already gone (or to override the row's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drive_file_id: Option<String>,
}

impl JobArgs for DriveDelete {
    const KIND: &'static str = "drive_delete";

    /// The upload's queue, attempts, backoff and bucket; a delete is one short call.
    fn policy() -> Policy {
        Policy {
            timeout: Some(Duration::from_secs(300)),
            ..super::DriveUpload::policy()
        }
    }

    fn unique_key(&self) -> Option<String> {
        match (&self.document_id, &self.drive_file_id) {
            (Some(id), _) => Some(format!("drive_delete:{id}")),
            (None, Some(file)) => Some(format!("drive_delete:file:{file}")),
            (None, None) => None,
        }
    }
}

const DOCUMENT_FILE: &str = "select drive_file_id from documents where id = $1";
const DOCUMENT_DELETE: &str = "delete from documents where id = $1";

/// Why a delete stopped: Drive's refusal (a rate limit is counted before the job snoozes), or
/// anything else, already the job's answer.
enum Stop {
    Drive(DriveError),
    Job(JobError),
}

impl From<DriveError> for Stop {
    fn from(error: DriveError) -> Self {
        Stop::Drive(error)
    }
}

impl From<sqlx::Error> for Stop {
    fn from(error: sqlx::Error) -> Self {
        Stop::Job(error.into())
    }
}

impl Job<AppState> for DriveDelete {
    async fn perform(self, ctx: JobContext<AppState>) -> JobResult {
        let result = match self.delete(&ctx).await {
            Err(Stop::Drive(DriveError::RateLimited { wait, reason })) => {
                return throttled(&ctx, self.document_id, wait, &reason).await;
            }
            Ok(done) => Ok(Some(done)),
            Err(Stop::Drive(error)) => Err(error.into()),
            Err(Stop::Job(error)) => Err(error),
        };
        forget_throttles(ctx.id);
        result
    }
}

impl DriveDelete {
    async fn delete(&self, ctx: &JobContext<AppState>) -> Result<serde_json::Value, Stop> {
        let pool = &ctx.state.pool;
        let drive = drive_client(&ctx.state)?;
        let mut file_id = self.drive_file_id.clone();
        if file_id.is_none()
            && let Some(document_id) = self.document_id
        {
            file_id = sqlx::query_scalar::<_, Option<String>>(DOCUMENT_FILE)
                .bind(document_id)
                .fetch_optional(pool)
                .await?
                .flatten();
            if file_id.is_none() {
                // Never recorded: an upload may still have created it.
                file_id = drive
                    .find_by_app_property(APP_PROPERTY, &document_id.to_string())
                    .await?
                    .map(|f| f.id);
            }
        }
        let existed = match &file_id {
            Some(id) => drive.delete(id).await?,
            None if self.document_id.is_none() => {
                return Err(Stop::Job(JobError::discard(
                    "give a document_id or a drive_file_id",
                )));
            }
            None => false,
        };
        if let Some(document_id) = self.document_id {
            sqlx::query(DOCUMENT_DELETE)
                .bind(document_id)
                .execute(pool)
                .await?;
        }
        Ok(json!({"drive_file_id": file_id, "existed": existed}))
    }
}
