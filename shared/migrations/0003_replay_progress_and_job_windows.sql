-- A replay is on record from the moment it starts, not only once it ends
-- (every run is recorded, a killed one included): it is inserted as
-- `running`, its counts follow the run (`updated_at` says when they last
-- did), and it ends `finished`, `interrupted` (Ctrl-C, SIGTERM) or `failed`
-- (stopped by errors), with `finished_at` set. A row still `running` whose
-- `updated_at` is old belongs to a run that died without a word (SIGKILL,
-- a lost host): what it did not move is still in its queue.
-- state: running | finished | interrupted | failed
ALTER TABLE replays ADD COLUMN IF NOT EXISTS state text NOT NULL DEFAULT 'finished';
ALTER TABLE replays ADD COLUMN IF NOT EXISTS updated_at timestamptz;
UPDATE replays SET updated_at = finished_at WHERE updated_at IS NULL;
ALTER TABLE replays ALTER COLUMN updated_at SET DEFAULT now();
ALTER TABLE replays ALTER COLUMN updated_at SET NOT NULL;
ALTER TABLE replays ALTER COLUMN finished_at DROP DEFAULT;
ALTER TABLE replays ALTER COLUMN finished_at DROP NOT NULL;

-- The window start (ms since the epoch) of a split job whose request was
-- replayed with a reset (`x-window-start`): its partition tasks, published
-- now or re-published later by the sweeper or `fleet jobs resume`, carry it,
-- so the retry window of a task counts from it rather than from the
-- request's old `invalidationTime`. NULL: the window counts from that time.
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS window_start bigint;
