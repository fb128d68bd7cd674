-- What operators did in the console (pipeline.console): who decided on which hold, who re-drove
-- which dead letter, when. `key` names the action's target once (one decision per hold, one
-- re-drive per dead letter): the console looks it up before it publishes, so a repeated request
-- (a double click, a retry) publishes nothing twice. The execution tier leaves re-driven dead
-- letters out of its list.

CREATE TABLE IF NOT EXISTS console_actions
(
    key       String,
    action    LowCardinality(String),
    target    String,
    operator  String,
    reason    String,
    detail    String,
    at        DateTime64(3, 'UTC')
)
ENGINE = MergeTree
ORDER BY (action, target, at)
SETTINGS non_replicated_deduplication_window = 1000;
