-- The calendar (time zone and week start) the stored day, week and month
-- windows of a scope were taken under. A newer window under the same
-- calendar is the next one: its counts start from zero. One under another
-- calendar (an agent's policy moved time zone or week start) may overlap
-- the stored one, so what was spent carries over (usage-counters.ts).
-- Before this column, the store guessed a calendar change from how near
-- two starts were, and took a 22-hour DST day (Antarctica/Troll) for one.
--
-- NULL (rows from before): taken as the calendar of the next address.
ALTER TABLE scope_usage ADD COLUMN calendar text;
