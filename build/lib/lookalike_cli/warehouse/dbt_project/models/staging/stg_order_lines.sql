{{ require_columns('order_lines', ['customer_id', 'order_id', 'ordered_at', 'category', 'quantity', 'amount']) }}

with source as (
    select * from {{ source('raw', 'order_lines') }}
),

renamed as (
    select
        cast(customer_id as bigint) as customer_id,
        cast(order_id as bigint) as order_id,
        cast(ordered_at as timestamp) as ordered_at,
        cast(category as string) as category,
        {{ column_or_null('order_lines', 'department', 'string') }} as department,
        cast(quantity as double) as quantity,
        cast(amount as double) as amount
    from source
)

select * from renamed
