"""What handlers are written against: EdgeApp, Context, matchers, outbound checks, the default bot."""
