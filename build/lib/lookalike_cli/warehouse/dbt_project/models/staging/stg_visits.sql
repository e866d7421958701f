-- One row per visit to a category page; empty when the optional source is absent.
{{ optional_event_staging('visits', 'visited_at', 'use_visits') }}
