{% if source_enabled('visits', 'use_visits') %}
{{ require_columns('visits', ['customer_id', 'visited_at', 'category']) }}

with source as (
    select * from {{ source('raw', 'visits') }}
),

renamed as (
    select
        cast(customer_id as bigint) as customer_id,
        cast(visited_at as timestamp) as visited_at,
        cast(category as varchar) as category
    from source
)

select * from renamed
{% else %}
-- Optional source absent (var use_visits): an empty relation with the same columns.
select
    cast(null as bigint) as customer_id,
    cast(null as timestamp) as visited_at,
    cast(null as varchar) as category
where 1 = 0
{% endif %}
