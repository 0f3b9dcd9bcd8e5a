"""The driver side: running a job on a local Ray instance or in a cluster (:mod:`.local`), the
Ray Jobs API client (:mod:`.jobs_api`), search campaigns (:mod:`.campaign`) and what they report
(:mod:`.campaign_report`), checks before a run
(:mod:`.preflight`) and the terminal's progress lines (:mod:`.progress`)."""
