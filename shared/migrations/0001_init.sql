-- Jobs of split requests: one row per (request, index key).
CREATE TABLE IF NOT EXISTS jobs (
    id                 uuid PRIMARY KEY,
    request_id         text        NOT NULL,
    invalidation_type  text        NOT NULL,
    index_key          text        NOT NULL,
    parameter_name     text        NOT NULL,
    request            jsonb       NOT NULL,
    total_hits         bigint      NOT NULL,
    task_count         integer     NOT NULL,
    state              text        NOT NULL DEFAULT 'running', -- running | completed
    created_at         timestamptz NOT NULL DEFAULT now(),
    completed_at       timestamptz,
    event_published_at timestamptz
);
CREATE INDEX IF NOT EXISTS jobs_created_at ON jobs (created_at DESC);

-- One row per partition task. A task marks only its own row: no
-- read-modify-write of the whole job (seed 000: no optimistic-lock fights).
CREATE TABLE IF NOT EXISTS job_tasks (
    job_id         uuid        NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    task_no        integer     NOT NULL,
    partition_from bigint,      -- inclusive; NULL = unbounded
    partition_to   bigint,      -- exclusive; NULL = unbounded
    expected_hits  bigint      NOT NULL,
    hits           bigint,
    status         text        NOT NULL DEFAULT 'pending', -- pending | running | done
    attempts       integer     NOT NULL DEFAULT 0,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    done_at        timestamptz,
    PRIMARY KEY (job_id, task_no)
);
CREATE INDEX IF NOT EXISTS job_tasks_stalled ON job_tasks (updated_at) WHERE status <> 'done';

-- Messages too old to retry: the whole message and why.
CREATE TABLE IF NOT EXISTS parked_messages (
    id               bigserial PRIMARY KEY,
    message_key      text UNIQUE,  -- idempotency: the same delivery parks once
    reason           text        NOT NULL,
    original_exchange    text    NOT NULL,
    original_routing_key text    NOT NULL,
    attempts         integer     NOT NULL,
    invalidation_time timestamptz,
    headers          jsonb       NOT NULL,
    body             bytea       NOT NULL,
    parked_at        timestamptz NOT NULL DEFAULT now()
);

-- What operators replayed from dead-letter and parking queues.
CREATE TABLE IF NOT EXISTS replays (
    id          bigserial PRIMARY KEY,
    queue       text        NOT NULL,
    target      text        NOT NULL,
    filter      text,
    operator    text        NOT NULL,
    host        text        NOT NULL,
    dry_run     boolean     NOT NULL,
    moved       integer     NOT NULL,
    kept        integer     NOT NULL,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT now()
);
