-- One row per campaign engagement in a category; empty when the optional source is absent.
{{ optional_event_staging('engagements', 'engaged_at', 'use_engagements') }}
