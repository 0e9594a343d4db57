-- A trial's serving cost is counted, not timed: millions of multiply-adds of a request's model maths
-- (model/cost.py). cost_ms stays for the trials measured before, and is no longer written.
ALTER TABLE tuning_trials ADD COLUMN cost_madds real;
