"""Independent protocol peers (Node.js) the device-driver tests run against."""
