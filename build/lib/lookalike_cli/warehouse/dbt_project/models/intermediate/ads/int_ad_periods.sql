{{ config(enabled=ads_enabled(), tags=['ads']) }}
-- One row: the ads history [first_date, split_date) ('train') and the later held-out period
-- [split_date, last_date] ('test'). Models train on the first and are judged on the second.
with stats as (
    select * from {{ ref('stg_ad_daily_stats') }}
),

bounds as (
    select
        min(stat_date) as first_date,
        max(stat_date) as last_date,
        {{ dbt.datediff('min(stat_date)', 'max(stat_date)', 'day') }} + 1 as history_days
    from stats
),

final as (
    select
        first_date,
        last_date,
        {% if var('ads_split_date') %}
        cast('{{ var("ads_split_date") }}' as date) as split_date,
        {% else %}
        cast({{ dbt.dateadd('day', '1 - cast(floor(history_days * ' ~ var('ads_test_fraction') ~ ') as integer)', 'last_date') }} as date) as split_date,
        {% endif %}
        history_days
    from bounds
)

select
    first_date,
    split_date,
    last_date,
    {{ dbt.datediff('first_date', 'split_date', 'day') }} as train_days,
    {{ dbt.datediff('split_date', 'last_date', 'day') }} + 1 as test_days
from final
