-- A task's end is not only `done`: a task whose message was dead-lettered
-- (bad input, attempts exhausted) is `failed`, one the retry handler parked
-- is `parked`; the sweeper re-publishes neither, and `jobs show` says why.
-- status: pending | running | done | failed | parked
ALTER TABLE job_tasks ADD COLUMN IF NOT EXISTS error text;
-- Hits the task's scan found without a usable `id`: counted, never published.
ALTER TABLE job_tasks ADD COLUMN IF NOT EXISTS missing_ids bigint NOT NULL DEFAULT 0;
