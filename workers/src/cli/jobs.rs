//! `fleet jobs list | show <id> | resume <id>`: the partition progress of
//! large (split) requests, from PostgreSQL.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use clap::Subcommand;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};
use fleet_shared::config::Config;
use fleet_shared::db::{self, JobRow};
use sqlx::PgPool;
use uuid::Uuid;

/// The `jobs` subcommands.
#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Recent jobs, newest first: request, type, index key, state, tasks done, hits, age.
    List {
        /// How many jobs to show.
        #[arg(long, default_value_t = 20)]
        limit: i64,
        /// Only jobs in this state.
        #[arg(long, value_parser = ["running", "completed"])]
        state: Option<String>,
        /// One JSON object per job instead of the table (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// One job and each of its partition tasks.
    Show {
        /// The job id, a unique prefix of it (as `jobs list` prints it), or
        /// the request id of a split request.
        id: String,
    },
    /// Re-publish the job's tasks that are not done (after a purge or an outage).
    Resume {
        /// The job id, a unique prefix of it, or the request id.
        id: String,
    },
}

/// Runs one `jobs` subcommand.
pub async fn run(config: &Config, cmd: JobsCommand) -> anyhow::Result<ExitCode> {
    super::using(config, "PostgreSQL", "database.url", &config.database.url);
    // Reading (and resuming) what the workers recorded never migrates: a
    // command pointed at the wrong database says so instead of "no jobs".
    let pool = db::connect_existing(&config.database.url, 2).await?;
    match cmd {
        JobsCommand::List { limit, state, json } => {
            list(&pool, limit, state.as_deref(), json).await
        }
        JobsCommand::Show { id } => {
            let job = find(&pool, &id).await?;
            show(&pool, &job).await
        }
        JobsCommand::Resume { id } => {
            let job = find(&pool, &id).await?;
            resume(config, &pool, &job).await
        }
    }
}

/// Finds one job by its id, a unique prefix of it, or its request id; a
/// miss or an ambiguous prefix says what to type instead.
async fn find(pool: &PgPool, id: &str) -> anyhow::Result<JobRow> {
    let id = id.trim();
    if let Ok(uuid) = Uuid::parse_str(id) {
        return db::job(pool, uuid)
            .await
            .with_context(|| format!("cannot read job {uuid} from PostgreSQL"))?
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "no job with id {uuid} in this database; `fleet jobs list` shows the recent ones"
                )
            });
    }
    let mut found = db::jobs_of_request(pool, id)
        .await
        .context("cannot read jobs from PostgreSQL")?;
    let prefix = id.to_ascii_lowercase();
    if found.is_empty()
        && prefix.len() >= 4
        && prefix.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
    {
        found = db::jobs_by_id_prefix(pool, &prefix, 10)
            .await
            .context("cannot read jobs from PostgreSQL")?;
    }
    match found.len() {
        0 => anyhow::bail!(
            "no job with id, id prefix or request id {id:?} in this database; \
             `fleet jobs list` shows the recent ones (a request resolved in place has no job)"
        ),
        1 => Ok(found.remove(0)),
        _ => {
            let candidates: Vec<String> = found
                .iter()
                .map(|j| {
                    format!(
                        "  {}  {} {} on {}",
                        j.id, j.request_id, j.invalidation_type, j.index_key
                    )
                })
                .collect();
            anyhow::bail!(
                "{id:?} names {} jobs; give one of their ids:\n{}",
                found.len(),
                candidates.join("\n")
            )
        }
    }
}

async fn list(
    pool: &PgPool,
    limit: i64,
    state: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let jobs = db::recent_jobs(pool, limit.max(1), state)
        .await
        .context("cannot read jobs from PostgreSQL")?;
    if json {
        for j in &jobs {
            println!("{}", serde_json::to_string(j)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    if jobs.is_empty() {
        println!("No jobs yet: only requests over the split limit become jobs.");
        return Ok(ExitCode::SUCCESS);
    }
    let now = Utc::now();
    let mut table = table(&[
        "job", "request", "type", "index", "state", "tasks", "hits", "age",
    ]);
    for j in &jobs {
        table.add_row(vec![
            Cell::new(j.id),
            Cell::new(&j.request_id),
            Cell::new(&j.invalidation_type),
            Cell::new(&j.index_key),
            Cell::new(&j.state),
            Cell::new(format!("{}/{}", j.done_tasks, j.task_count))
                .set_alignment(CellAlignment::Right),
            Cell::new(j.total_hits).set_alignment(CellAlignment::Right),
            Cell::new(age(now, j.created_at)).set_alignment(CellAlignment::Right),
        ]);
    }
    println!("{table}");
    Ok(ExitCode::SUCCESS)
}

async fn show(pool: &PgPool, job: &JobRow) -> anyhow::Result<ExitCode> {
    let tasks = db::tasks(pool, job.id)
        .await
        .with_context(|| format!("cannot read the tasks of job {}", job.id))?;
    let now = Utc::now();
    let done = tasks.iter().filter(|t| t.status == "done").count();
    let hits: i64 = tasks.iter().filter_map(|t| t.hits).sum();
    println!("job          {}", job.id);
    println!("request      {}", job.request_id);
    println!(
        "what         {} on {} = {}",
        job.invalidation_type,
        job.parameter_name,
        ids_preview(&job.request)
    );
    println!("index key    {}", job.index_key);
    println!("state        {}", job.state);
    println!("tasks        {done}/{} done", job.task_count);
    for (status, queue) in [
        ("parked", "invalidation.parked"),
        ("failed", "invalidation.partitions.dlq"),
    ] {
        let n = tasks.iter().filter(|t| t.status == status).count();
        if n > 0 {
            println!(
                "{status:<12} {n} task(s): the sweeper leaves them alone; once the cause is fixed, \
                 `fleet dlq replay {queue}` runs them again"
            );
        }
    }
    println!("hits         {hits} of {} expected", job.total_hits);
    let missing: i64 = tasks.iter().map(|t| t.missing_ids).sum();
    if missing > 0 {
        println!("without id   {missing} hit(s) had no usable `id`: counted, not published");
    }
    println!(
        "created      {} ({} ago)",
        job.created_at.to_rfc3339(),
        age(now, job.created_at)
    );
    if let Some(c) = job.completed_at {
        println!("completed    {}", c.to_rfc3339());
    }
    let mut table = table(&[
        "task",
        "searchPartition",
        "expected",
        "hits",
        "status",
        "attempts",
        "updated",
        "why",
    ]);
    for t in &tasks {
        table.add_row(vec![
            Cell::new(t.task_no).set_alignment(CellAlignment::Right),
            Cell::new(range(t.partition_from, t.partition_to)),
            Cell::new(t.expected_hits).set_alignment(CellAlignment::Right),
            Cell::new(t.hits.map(|h| h.to_string()).unwrap_or_else(|| "-".into()))
                .set_alignment(CellAlignment::Right),
            Cell::new(&t.status),
            Cell::new(t.attempts).set_alignment(CellAlignment::Right),
            Cell::new(format!("{} ago", age(now, t.updated_at)))
                .set_alignment(CellAlignment::Right),
            Cell::new(
                t.error
                    .as_deref()
                    .map(|e| abbreviate(e, 60))
                    .unwrap_or_default(),
            ),
        ]);
    }
    println!("{table}");
    Ok(ExitCode::SUCCESS)
}

async fn resume(config: &Config, pool: &PgPool, job: &JobRow) -> anyhow::Result<ExitCode> {
    let tasks = db::tasks(pool, job.id)
        .await
        .with_context(|| format!("cannot read the tasks of job {}", job.id))?;
    let ctx = crate::app::context(&Arc::new(config.clone()), "cli").await?;
    let waiting: Vec<&db::TaskRow> = tasks
        .iter()
        .filter(|t| matches!(t.status.as_str(), "failed" | "parked"))
        .collect();
    for t in &waiting {
        let from = if t.status == "parked" {
            "invalidation.parked"
        } else {
            "invalidation.partitions.dlq"
        };
        println!(
            "Task {} is {}: its message waits in {from}; replay it with `fleet dlq replay {from}` once the cause is fixed. Left alone.",
            t.task_no, t.status
        );
    }
    let runnable: Vec<db::TaskRow> = tasks
        .iter()
        .filter(|t| matches!(t.status.as_str(), "pending" | "running" | "retrying"))
        .cloned()
        .collect();
    if runnable.is_empty() {
        if waiting.is_empty() && job.state != "completed" {
            // Every task is done but the job never completed (its finisher
            // died in between): complete and announce it now.
            crate::job::complete_if_done(&ctx, pool, job.id)
                .await
                .with_context(|| format!("cannot complete job {}", job.id))?;
            println!(
                "Every task of job {} was done; the job is now completed and announced.",
                job.id
            );
        } else {
            println!(
                "Job {} has no task left to run (state {}); nothing re-published.",
                job.id, job.state
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let n = crate::job::republish_pending(&ctx, job, &runnable)
        .await
        .with_context(|| format!("cannot re-publish the tasks of job {}", job.id))?;
    println!(
        "Re-published {n} task(s) of job {} to the partition queue; a partition worker picks them up.",
        job.id
    );
    Ok(ExitCode::SUCCESS)
}

/// At most `max` characters of `s`, with an ellipsis when cut.
fn abbreviate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_string(),
    }
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(header.to_vec());
    t
}

/// A task's `searchPartition` range: inclusive start, exclusive end, open
/// ends shown as `min` / `max` (the last range includes the maximum).
pub fn range(from: Option<i64>, to: Option<i64>) -> String {
    let start = from.map(|f| f.to_string()).unwrap_or_else(|| "min".into());
    match to {
        Some(t) => format!("[{start}, {t})"),
        None => format!("[{start}, max]"),
    }
}

/// A short, human age: `42s`, `3m 5s`, `2h 10m`, `4d 1h`.
pub fn age(now: DateTime<Utc>, then: DateTime<Utc>) -> String {
    let s = (now - then).num_seconds().max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86400, (s % 86400) / 3600),
    }
}

/// The first parameter ids of the stored request, for a one-line summary.
fn ids_preview(request: &serde_json::Value) -> String {
    let ids: Vec<String> = request["parameterIds"]
        .as_array()
        .map(|a| a.iter().map(|v| v.to_string()).collect())
        .unwrap_or_default();
    if ids.len() > 10 {
        format!("{} … ({} ids)", ids[..10].join(", "), ids.len())
    } else {
        ids.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_read_as_half_open_intervals() {
        assert_eq!(range(None, Some(17)), "[min, 17)");
        assert_eq!(range(Some(17), Some(900)), "[17, 900)");
        assert_eq!(range(Some(900), None), "[900, max]");
        assert_eq!(range(None, None), "[min, max]");
    }

    #[test]
    fn ages_are_short() {
        let now = Utc::now();
        assert_eq!(age(now, now - chrono::Duration::seconds(42)), "42s");
        assert_eq!(age(now, now - chrono::Duration::seconds(185)), "3m 5s");
        assert_eq!(age(now, now - chrono::Duration::minutes(130)), "2h 10m");
        assert_eq!(age(now, now - chrono::Duration::hours(97)), "4d 1h");
    }
}
