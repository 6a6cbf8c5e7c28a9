"""Helpers of the tests: fakes, real servers, browsers, validators and case builders."""
