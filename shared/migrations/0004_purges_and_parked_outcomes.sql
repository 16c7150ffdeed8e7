-- An operator's purge is on record like a replay (who, where from, when,
-- which queue, which filter, how many): from its start (`running`), ending
-- `finished`, `interrupted` or `failed`.
CREATE TABLE IF NOT EXISTS purges (
    id          bigserial PRIMARY KEY,
    queue       text        NOT NULL,
    filter      text,
    operator    text        NOT NULL,
    host        text        NOT NULL,
    purged      integer     NOT NULL DEFAULT 0,
    kept        integer     NOT NULL DEFAULT 0,
    state       text        NOT NULL DEFAULT 'running',
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);

-- What became of a parked message once an operator acted on it: replayed
-- (by which replay) or purged (by which purge). A row with neither is
-- still in `invalidation.parked` (or was taken by hand).
ALTER TABLE parked_messages ADD COLUMN IF NOT EXISTS replayed_at timestamptz;
ALTER TABLE parked_messages ADD COLUMN IF NOT EXISTS replay_id bigint REFERENCES replays (id);
ALTER TABLE parked_messages ADD COLUMN IF NOT EXISTS purged_at timestamptz;
ALTER TABLE parked_messages ADD COLUMN IF NOT EXISTS purge_id bigint REFERENCES purges (id);
-- A message is matched to its row by its body (the message carries no row id).
CREATE INDEX IF NOT EXISTS parked_messages_open_by_body ON parked_messages (md5(body))
    WHERE replayed_at IS NULL AND purged_at IS NULL;
