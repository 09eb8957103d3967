"""Exchange adapters behind one interface (:class:`bot.exchanges.base.Exchange`)."""
